# Plots and the results table, declared for `snakemake --report`.


localrules:
    plot_curves,
    plot_samples,
    results_table,


rule plot_curves:
    input:
        unpack(training_metrics),
        evaluation=f"{RESULTS}/{{experiment}}/evaluation.csv",
    output:
        png=report(
            f"{RESULTS}/{{experiment}}/curves.png",
            caption="../report/curves.rst",
            category="Reward curves",
            labels={"experiment": "{experiment}"},
        ),
    log:
        f"{RESULTS}/logs/plot_curves/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_curves/{{experiment}}.tsv"
    conda:
        JOB_ENV
    params:
        metrics=labelled(training_metrics),
        objective=lambda wildcards: headline_objectives()[wildcards.experiment],
    shell:
        "d3po plot-curves --evaluation {input.evaluation:q} --metrics {params.metrics:q}"
        " --objective {params.objective:q} --out {output.png:q} > {log:q} 2>&1"


rule plot_samples:
    input:
        unpack(final_samples),
        before=f"{RESULTS}/samples/base",
    output:
        png=report(
            f"{RESULTS}/{{experiment}}/samples.png",
            caption="../report/samples.rst",
            category="Samples",
            labels={"experiment": "{experiment}"},
        ),
    log:
        f"{RESULTS}/logs/plot_samples/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_samples/{{experiment}}.tsv"
    conda:
        JOB_ENV
    params:
        after=labelled(final_samples),
    shell:
        "d3po plot-samples --before {input.before:q} --after {params.after:q}"
        " --out {output.png:q} > {log:q} 2>&1"


rule results_table:
    input:
        evaluations=evaluation_tables(),
    output:
        html=report(
            f"{RESULTS}/results_table.html",
            caption="../report/results_table.rst",
            category="Results table",
        ),
        csv=report(
            f"{RESULTS}/results_table.csv",
            caption="../report/results_table_csv.rst",
            category="Results table",
        ),
        md=f"{RESULTS}/results_table.md",
    log:
        f"{RESULTS}/logs/results_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/results_table.tsv"
    conda:
        JOB_ENV
    params:
        paper=json.dumps(config["paper"], separators=(",", ":")),
        objectives=json.dumps(headline_objectives(), separators=(",", ":")),
    shell:
        "d3po table --evaluation {input.evaluations:q} --out-csv {output.csv:q}"
        " --out-md {output.md:q} --out-html {output.html:q} --paper {params.paper:q}"
        " --objectives {params.objectives:q} > {log:q} 2>&1"
