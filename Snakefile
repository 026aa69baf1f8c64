"""D3PO and baselines on proxy objectives: train, sample every checkpoint, score, plot, tabulate.

    snakemake --cores 2                                   # the embedded tiny default
    snakemake --cores 2 --configfile config/paper.yaml --replace-workflow-config   # the paper
    snakemake --profile profiles/slurm --configfile config/paper.yaml   # on a SLURM cluster
    snakemake --report report.html                        # plots and table as one page

Every rule calls the `d3po` command line (src/d3po/cli.py); docs/design.md lists the files
that pass between the steps.
"""

from snakemake.utils import min_version

min_version("9.0")


# The default config, only when no config file is given: Snakemake (9.27) does not pass
# --replace-workflow-config on to the jobs it submits to a cluster, which would read
# config/config.yaml extended by the user's file (its experiments and settings leaking in).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# the report's landing page: what this run was (rendered from the config)
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
# the users' proxy rules (config `proxy_rules`), then the config check
include: "workflow/rules/proxy_rules.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/rounds.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/smoke.smk"


rule all:
    default_target: True
    input:
        all_targets(),
