# Scoring: one table (id, proxy, value) per sample set and proxy.
#
# `score_samples` handles every proxy registered in d3po.rewards. To score with a proxy of your
# own without touching the package, list its name in config `external_proxies` and add a rule
# that writes the same table for it, for example:
#
# rule score_my_judge:
#     input:
#         samples=f"{RESULTS}/samples/{{sample_set}}",
#     output:
#         csv=f"{RESULTS}/scores/{{sample_set}}/my_judge.csv",
#     log:
#         f"{RESULTS}/logs/score_my_judge/{{sample_set}}.log",
#     conda:
#         "../envs/d3po.yaml"
#     shell:
#         "python my_judge.py {input.samples}/manifest.csv {output.csv} > {log} 2>&1"


rule score_samples:
    input:
        samples=f"{RESULTS}/samples/{{sample_set}}",
    output:
        csv=f"{RESULTS}/scores/{{sample_set}}/{{proxy}}.csv",
    log:
        f"{RESULTS}/logs/score_samples/{{sample_set}}/{{proxy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_samples/{{sample_set}}/{{proxy}}.tsv"
    # Seconds to minutes per table: the slurm profile bundles them (group-components: score).
    group:
        "score"
    conda:
        "../envs/d3po.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
        # one per score job: the profile allows one at a time inside a bundle
        bundle_slot=1,
    params:
        options=as_json(proxy_options),
    shell:
        "d3po score --samples {input.samples} --proxy {wildcards.proxy}"
        " --out {output.csv} --options {params.options:q} > {log:q} 2>&1"
