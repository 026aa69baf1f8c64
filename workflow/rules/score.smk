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
    conda:
        "../envs/d3po.yaml"
    resources:
        gpu=job_resources("evaluate", "gpu"),
        runtime=job_resources("evaluate", "runtime"),
        mem_mb=job_resources("evaluate", "mem_mb"),
        cpus_per_task=job_resources("evaluate", "cpus_per_task"),
    params:
        options=as_json(proxy_options),
    shell:
        "d3po score --samples {input.samples} --proxy {wildcards.proxy}"
        " --out {output.csv} --options {params.options:q} > {log:q} 2>&1"
