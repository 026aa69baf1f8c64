# Feedback rounds (experiments with `judgements:`): round r samples a set to judge (with every
# step kept) from round r-1's final adapter (round 1: the base model), gets judgements on it
# (people's file, the toy world's simulated annotator, or a proxy's scores), and trains D3PO
# on those pairs starting from round r-1's adapter. Checkpoints are numbered across rounds.


localrules:
    simulate_judgements,


# A round's chain (sample, judge, train from the previous adapter) is a run's longest serial
# path: scheduled first, its training runs beside the online runs instead of after them.
ROUND_PRIORITY = 1


rule sample_round:
    input:
        unpack(round_start),
    output:
        dir=directory(f"{RESULTS}/samples/feedback/{{experiment}}/round{{round}}"),
    log:
        f"{RESULTS}/logs/sample_round/{{experiment}}/round{{round}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_round/{{experiment}}/round{{round}}.tsv"
    priority: ROUND_PRIORITY
    conda:
        JOB_ENV
    threads: job_threads("sample")
    resources:
        **job_resources("sample"),
    params:
        settings=as_json(judging_sample_settings),
        adapter=round_start_argument("--adapter"),
    shell:
        "d3po sample --settings {params.settings:q} --out {output.dir:q} --trajectories"
        " {params.adapter:q} > {log:q} 2>&1"


rule simulate_judgements:
    input:
        samples=f"{RESULTS}/samples/feedback/{{experiment}}/round{{round}}",
    output:
        f"{RESULTS}/feedback/{{experiment}}/round{{round}}/simulated.jsonl",
    log:
        f"{RESULTS}/logs/simulate_judgements/{{experiment}}/round{{round}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/simulate_judgements/{{experiment}}/round{{round}}.tsv"
    priority: ROUND_PRIORITY
    conda:
        JOB_ENV
    params:
        criterion=lambda wildcards: config["experiments"][wildcards.experiment][
            "judgements"
        ]["simulate"],
        protocol=lambda wildcards: config["experiments"][wildcards.experiment][
            "judgements"
        ]["protocol"],
    # through the labelling app's HTTP interface, as a person would judge the set
    shell:
        "d3po annotate --samples {input.samples:q} --criterion {params.criterion:q}"
        " --out {output:q} --via-http --protocol {params.protocol:q} > {log:q} 2>&1"


rule train_round:
    input:
        unpack(round_feedback),
    output:
        metrics=f"{RESULTS}/train/{{experiment}}/{{method}}/seed{{seed}}/round{{round}}/metrics.csv",
        checkpoints=directory(
            f"{RESULTS}/train/{{experiment}}/{{method}}/seed{{seed}}/round{{round}}/checkpoints"
        ),
    log:
        f"{RESULTS}/logs/train_round/{{experiment}}/{{method}}/seed{{seed}}/round{{round}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_round/{{experiment}}/{{method}}/seed{{seed}}/round{{round}}.tsv"
    priority: ROUND_PRIORITY
    conda:
        JOB_ENV
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    params:
        settings=as_json(train_settings),
        run_dir=lambda wildcards: round_run_dir(
            wildcards.experiment, wildcards.method, wildcards.seed, wildcards.round
        ),
        launcher=lambda wildcards, resources: training_launcher(resources.gpu),
        feedback=feedback_arguments,
        state_dir=lambda wildcards: f"{RESULTS}/state/{wildcards.experiment}/{wildcards.method}/seed{wildcards.seed}/round{wildcards.round}",
    shell:
        "{params.launcher} train --settings {params.settings:q} --run-dir {params.run_dir:q}"
        " --state-dir {params.state_dir:q} {params.feedback:q} > {log:q} 2>&1"
