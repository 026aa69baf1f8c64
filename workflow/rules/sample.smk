# Sampling: the base model and every checkpoint, on the held-out evaluation prompts and seed.


rule sample_baseline:
    output:
        dir=directory(f"{RESULTS}/samples/base"),
    log:
        f"{RESULTS}/logs/sample_baseline.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_baseline.tsv"
    conda:
        "../envs/d3po.yaml"
    resources:
        gpu=job_resources("sample", "gpu"),
        runtime=job_resources("sample", "runtime"),
        mem_mb=job_resources("sample", "mem_mb"),
        cpus_per_task=job_resources("sample", "cpus_per_task"),
    params:
        settings=as_json(sample_settings),
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir} > {log:q} 2>&1"


rule sample_checkpoint:
    input:
        checkpoints=checkpoint_source,
    output:
        dir=directory(
            f"{RESULTS}/samples/{{experiment}}/{{method}}/seed{{seed}}/epoch{{epoch}}"
        ),
    log:
        f"{RESULTS}/logs/sample_checkpoint/{{experiment}}/{{method}}/seed{{seed}}/epoch{{epoch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_checkpoint/{{experiment}}/{{method}}/seed{{seed}}/epoch{{epoch}}.tsv"
    conda:
        "../envs/d3po.yaml"
    resources:
        gpu=job_resources("sample", "gpu"),
        runtime=job_resources("sample", "runtime"),
        mem_mb=job_resources("sample", "mem_mb"),
        cpus_per_task=job_resources("sample", "cpus_per_task"),
    params:
        settings=as_json(sample_settings),
        adapter=checkpoint_adapter,
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir}"
        " --adapter {params.adapter:q} > {log:q} 2>&1"
