# Scoring: one table (id, proxy, value) per sample set and proxy.
#
# `score_samples` handles every proxy registered in d3po.rewards. A proxy of your own that
# needs its own environment is a rule in a file of your own listed in config `proxy_rules`
# (workflow/rules/proxy_rules.smk; workflow/proxies/clip_score.smk is an example).


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
        JOB_ENV
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
