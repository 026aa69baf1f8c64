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
        checkpoints=f"{RESULTS}/train/{{experiment}}/{{method}}/seed{{seed}}/checkpoints",
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
        adapter=lambda wildcards, input: f"{input.checkpoints}/epoch_{int(wildcards.epoch):04d}",
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir}"
        " --adapter {params.adapter:q} > {log:q} 2>&1"


# Human-feedback rounds (experiments with `judgements:`): the set people judge, with every step
# kept so that D3PO can train on it; and, in the toy world, the simulated annotator.


localrules:
    simulate_judgements,


rule sample_for_judging:
    output:
        dir=directory(f"{RESULTS}/feedback/{{experiment}}/samples"),
    log:
        f"{RESULTS}/logs/sample_for_judging/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_for_judging/{{experiment}}.tsv"
    conda:
        "../envs/d3po.yaml"
    resources:
        gpu=job_resources("sample", "gpu"),
        runtime=job_resources("sample", "runtime"),
        mem_mb=job_resources("sample", "mem_mb"),
        cpus_per_task=job_resources("sample", "cpus_per_task"),
    params:
        settings=as_json(judging_sample_settings),
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir} --trajectories"
        " > {log:q} 2>&1"


rule simulate_judgements:
    input:
        samples=f"{RESULTS}/feedback/{{experiment}}/samples",
    output:
        f"{RESULTS}/feedback/{{experiment}}/simulated.jsonl",
    log:
        f"{RESULTS}/logs/simulate_judgements/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_judgements/{{experiment}}.tsv"
    conda:
        "../envs/d3po.yaml"
    params:
        criterion=lambda wildcards: config["experiments"][wildcards.experiment][
            "judgements"
        ]["simulate"],
    shell:
        "d3po annotate --samples {input.samples} --criterion {params.criterion}"
        " --out {output} > {log:q} 2>&1"
