# Evaluation: one long table per experiment (experiment, method, seed, epoch, samples_seen,
# proxy, mean, std, n) over the base model and every checkpoint of every method and seed.


localrules:
    collect_evaluation,


rule collect_evaluation:
    input:
        scores=evaluation_scores,
    output:
        csv=f"{RESULTS}/{{experiment}}/evaluation.csv",
    log:
        f"{RESULTS}/logs/collect_evaluation/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_evaluation/{{experiment}}.tsv"
    conda:
        JOB_ENV
    params:
        runs=as_json(lambda wildcards: evaluation_runs(wildcards.experiment)),
        options=as_json(proxy_options),
    shell:
        "d3po collect --runs {params.runs:q} --options {params.options:q}"
        " --out {output.csv:q} > {log:q} 2>&1"
