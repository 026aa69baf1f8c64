# Training: one online run (sample, judge, update, checkpoint) per experiment x method x seed.
#
# The resume state lives in results/state/..., which is not a declared output: Snakemake never
# deletes it, so a run killed by the cluster (preemption, time limit) resumes where it stopped.
# A finished run clears its state when it publishes its outputs, so a rerun with new settings
# starts afresh.


rule train:
    output:
        metrics=f"{RESULTS}/train/{{experiment}}/{{method}}/seed{{seed}}/metrics.csv",
        checkpoints=directory(
            f"{RESULTS}/train/{{experiment}}/{{method}}/seed{{seed}}/checkpoints"
        ),
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{experiment}}/{{method}}/seed{{seed}}.tsv"
    conda:
        JOB_ENV
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    params:
        settings=as_json(train_settings),
        run_dir=lambda wildcards: run_dir(
            wildcards.experiment, wildcards.method, wildcards.seed
        ),
        launcher=lambda wildcards, resources: training_launcher(resources.gpu),
        state_dir=lambda wildcards: f"{RESULTS}/state/{wildcards.experiment}/{wildcards.method}/seed{wildcards.seed}",
    shell:
        "{params.launcher} train --settings {params.settings:q} --run-dir {params.run_dir:q}"
        " --state-dir {params.state_dir:q} > {log:q} 2>&1"
