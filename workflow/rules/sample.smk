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
    threads: job_threads("sample")
    resources:
        **job_resources("sample"),
    params:
        settings=as_json(sample_settings),
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir} > {log:q} 2>&1"


# All checkpoints of one training run in one job (one model load, one GPU allocation), written
# as one sample set per checkpoint. Its outputs depend on the experiment's checkpoint epochs,
# so there is one rule per experiment: sample_checkpoints_{experiment}.
for experiment in config["experiments"]:

    rule:
        name:
            f"sample_checkpoints_{experiment}"
        input:
            checkpoints=f"{RESULTS}/train/{experiment}/{{method}}/seed{{seed}}/checkpoints",
        output:
            **checkpoint_sample_dirs(experiment),
        log:
            f"{RESULTS}/logs/sample_checkpoints/{experiment}/{{method}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/sample_checkpoints/{experiment}/{{method}}/seed{{seed}}.tsv"
        conda:
            "../envs/d3po.yaml"
        threads: job_threads("sample")
        resources:
            **job_resources("sample", sample_sets=len(checkpoint_epochs(experiment))),
        params:
            settings=as_json(sample_settings),
            checkpoints=checkpoint_arguments,
        shell:
            "d3po sample --settings {params.settings:q} --checkpoint {params.checkpoints}"
            " > {log:q} 2>&1"


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
    threads: job_threads("sample")
    resources:
        **job_resources("sample"),
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
