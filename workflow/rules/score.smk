# Scoring: one table (id, proxy, value) per sample set and proxy.
#
# `score_samples` writes the tables of every registered proxy the evaluation lists, for one
# sample set, in one job (the images read once, torch imported once); `score_proxy` writes one
# table of another registered proxy (a round's objective the evaluation does not list). A
# proxy of your own that needs its own environment is a rule in a file of your own listed in
# config `proxy_rules` (workflow/rules/proxy_rules.smk; workflow/proxies/clip_score.smk).


# (Only when the evaluation lists a registered proxy: a rule needs an output.)
if evaluated_registered_proxies():

    rule score_samples:
        input:
            samples=f"{RESULTS}/samples/{{sample_set}}",
        output:
            csvs=[
                f"{RESULTS}/scores/{{sample_set}}/{proxy}.csv"
                for proxy in evaluated_registered_proxies()
            ],
        log:
            f"{RESULTS}/logs/score_samples/{{sample_set}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/score_samples/{{sample_set}}.tsv"
        # Seconds to minutes per set: the slurm profile bundles them (group-components: score).
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
            tables=lambda wildcards, output: [
                f"{proxy}={csv}"
                for proxy, csv in zip(evaluated_registered_proxies(), output.csvs)
            ],
            options=as_json(proxy_options),
        shell:
            "d3po score --samples {input.samples:q} --proxy {params.tables:q}"
            " --options {params.options:q} > {log:q} 2>&1"


rule score_proxy:
    input:
        samples=f"{RESULTS}/samples/{{sample_set}}",
    output:
        csv=f"{RESULTS}/scores/{{sample_set}}/{{proxy}}.csv",
    log:
        f"{RESULTS}/logs/score_proxy/{{sample_set}}/{{proxy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_proxy/{{sample_set}}/{{proxy}}.tsv"
    wildcard_constraints:
        # only proxies score_samples does not write: the two never compete for a file
        proxy=alternatives(unevaluated_registered_proxies()),
    group:
        "score"
    conda:
        JOB_ENV
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
        bundle_slot=1,
    params:
        options=as_json(proxy_options),
    shell:
        "d3po score --samples {input.samples:q} --proxy {wildcards.proxy}={output.csv:q}"
        " --options {params.options:q} > {log:q} 2>&1"
