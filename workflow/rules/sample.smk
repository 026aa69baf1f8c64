# Sampling: the base model and every checkpoint, on the held-out evaluation prompts and seed.


rule sample_baseline:
    output:
        dir=directory(f"{RESULTS}/samples/base"),
    log:
        f"{RESULTS}/logs/sample_baseline.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_baseline.tsv"
    conda:
        JOB_ENV
    threads: job_threads("sample")
    resources:
        **job_resources("sample"),
    params:
        settings=as_json(sample_settings),
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir:q} > {log:q} 2>&1"


# All checkpoints of one training run in one job (one model load, one GPU allocation), written
# as one sample set per checkpoint. Its outputs depend on the experiment's checkpoint epochs,
# so there is one rule per experiment: sample_checkpoints_{experiment}.
for experiment in config["experiments"]:

    rule:
        name:
            f"sample_checkpoints_{experiment}"
        input:
            checkpoint_folders(experiment),
        output:
            **checkpoint_sample_dirs(experiment),
        log:
            f"{RESULTS}/logs/sample_checkpoints/{experiment}/{{method}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/sample_checkpoints/{experiment}/{{method}}/seed{{seed}}.tsv"
        conda:
            JOB_ENV
        threads: job_threads("sample")
        resources:
            **job_resources("sample", sample_sets=len(checkpoint_epochs(experiment))),
        params:
            settings=as_json(sample_settings),
            checkpoints=checkpoint_arguments(experiment),
        shell:
            "d3po sample --settings {params.settings:q} --checkpoint {params.checkpoints:q}"
            " > {log:q} 2>&1"
