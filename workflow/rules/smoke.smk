# Check a partition before a long run: `snakemake gpu_smoke --profile profiles/slurm` prints what
# a GPU job sees (devices, torch and CUDA versions, a tiny forward pass) to the output. It asks
# for config resources.smoke (one GPU by default, whatever the other kinds ask).


rule gpu_smoke:
    output:
        f"{RESULTS}/gpu_smoke.txt",
    log:
        f"{RESULTS}/logs/gpu_smoke.log",
    benchmark:
        f"{RESULTS}/benchmarks/gpu_smoke.tsv"
    conda:
        JOB_ENV
    threads: job_threads("smoke")
    resources:
        **job_resources("smoke"),
    shell:
        "d3po gpu-smoke > {output:q} 2> {log:q}"
