# Check a partition before a long run: `snakemake gpu_smoke --profile profiles/slurm` prints what
# a training job sees (devices, torch and CUDA versions, a tiny forward pass) to the output.


rule gpu_smoke:
    output:
        f"{RESULTS}/gpu_smoke.txt",
    log:
        f"{RESULTS}/logs/gpu_smoke.log",
    benchmark:
        f"{RESULTS}/benchmarks/gpu_smoke.tsv"
    conda:
        "../envs/d3po.yaml"
    resources:
        gpu=job_resources("train", "gpu"),
        runtime=10,
        mem_mb=job_resources("train", "mem_mb"),
        cpus_per_task=job_resources("train", "cpus_per_task"),
    shell:
        "d3po gpu-smoke > {output:q} 2> {log:q}"
