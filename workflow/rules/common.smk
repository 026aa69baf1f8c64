"""Config validation, the per-job settings documents, target lists and wildcard constraints.

Config flows one way: config/*.yaml -> ../schemas/config.schema.yaml (fills the defaults) ->
the checks below (fail before any job, naming the field) -> one JSON settings document per job
(docs/design.md) -> `d3po <step> --settings ...`.
"""

import json
import re
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

METHODS = ("d3po", "ddpo")
RESULTS = config["results_dir"]


# ------------------------------------------------------------------------- config checks


def registered_proxy_names():
    """Proxy names `d3po score` knows, or None when the package (or torch, which it imports)
    cannot be imported here; the checks that need the package are then skipped."""
    try:
        from d3po.rewards import proxy_names
    except ImportError as error:
        logger.warning(
            f"Cannot import d3po ({error}); proxy names are not checked before the run. "
            "Install the package (pip install -e .) in the environment that runs Snakemake."
        )
        return None
    return list(proxy_names())


def check_config(config):
    """Fail before any job, naming the field, on mistakes the schema cannot see."""
    lists = sorted(config["prompts"])

    def check_prompt_list(field, name):
        if name not in config["prompts"]:
            raise WorkflowError(
                f"{field}: unknown prompt list '{name}'; known lists (config 'prompts'): "
                f"{', '.join(lists) or 'none'}"
            )

    registered = REGISTERED_PROXIES
    known = (
        None
        if registered is None
        else sorted(set(registered) | set(config["external_proxies"]))
    )

    def check_proxies(field, names):
        unknown = [] if known is None else [name for name in names if name not in known]
        if unknown:
            raise WorkflowError(
                f"{field}: unknown proxy {', '.join(map(repr, unknown))}; known proxies: "
                f"{', '.join(known)} (add your own in config 'external_proxies')"
            )

    check_prompt_list("evaluation.prompts", config["evaluation"]["prompts"])
    check_proxies("evaluation.proxies", config["evaluation"]["proxies"])
    check_proxies("proxies", config["proxies"])
    for name, experiment in config["experiments"].items():
        check_prompt_list(f"experiments.{name}.prompts", experiment["prompts"])
        check_proxies(f"experiments.{name}.objectives", experiment["objectives"])
        if experiment.get("judgements"):
            check_judged_experiment(name, experiment)
        if "ddpo" in experiment["methods"] and len(experiment["objectives"]) != 1:
            raise WorkflowError(
                f"experiments.{name}.objectives: DDPO needs exactly one objective (a scalar "
                f"reward), got {len(experiment['objectives'])}; drop ddpo from "
                f"experiments.{name}.methods or keep one objective"
            )
    # without the package here (a warning said so), the checks below cannot run
    if REGISTERED_PROXIES is None:
        return
    if config["model"]["source"] == "toy":
        check_toy_prompts()
    from d3po.models import ModelNotFoundError, check_source

    try:
        check_source(config["model"]["source"])
    except ModelNotFoundError as error:
        raise WorkflowError(str(error)) from None


def check_judged_experiment(name, experiment):
    """A human-feedback round trains D3PO on one judged set: say what is missing."""
    field = f"experiments.{name}"
    judgements = experiment["judgements"]
    if experiment["methods"] != ["d3po"]:
        raise WorkflowError(
            f"{field}.methods: a judged experiment trains D3PO only (DDPO needs scalar "
            f"rewards); set methods: [d3po]"
        )
    if judgements["prompts"] not in config["prompts"]:
        raise WorkflowError(
            f"{field}.judgements.prompts: unknown prompt list '{judgements['prompts']}'"
        )
    if bool(judgements["file"]) == bool(judgements["simulate"]):
        raise WorkflowError(
            f"{field}.judgements: set exactly one of 'file' (people's JSON Lines) and "
            "'simulate' (the toy world's annotator)"
        )
    if judgements["file"] and not Path(judgements["file"]).is_file():
        raise WorkflowError(
            f"{field}.judgements.file: '{judgements['file']}' does not exist; sample the set "
            f"to judge with `snakemake {RESULTS}/feedback/{name}/samples` first"
        )


def check_toy_prompts():
    """The toy model knows only its world's words: name the list and the known words."""
    from d3po.world import parse_prompt

    for name, prompts in config["prompts"].items():
        for prompt in prompts:
            try:
                parse_prompt(prompt)
            except ValueError as error:
                raise WorkflowError(f"prompts.{name}: {error}") from None


def check_d3po_command():
    """Every job runs `d3po`, found on the PATH it inherits from this shell (Slurm exports the
    submitting environment): without it each job would fail, said only in its log."""
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    deployment = workflow.deployment_settings
    uses_conda = (
        deployment is not None
        and DeploymentMethod.CONDA in deployment.deployment_method
    )
    if workflow.dryrun or uses_conda or shutil.which("d3po"):
        return
    raise WorkflowError(
        "`d3po` is not on the PATH, and every job runs it: activate the environment it is "
        "installed in (source .venv/bin/activate, or conda activate d3po) and run again, or "
        "run with --sdm conda."
    )


REGISTERED_PROXIES = registered_proxy_names()
check_config(config)
check_d3po_command()


# ------------------------------------------------------------------------- settings documents


def experiment_training(experiment):
    """The top-level training fields with the experiment's overrides applied."""
    return config["training"] | config["experiments"][experiment]["training"]


def checkpoint_epochs(experiment):
    """Epochs with a saved adapter: every checkpoint_every epochs, plus the last (never 0)."""
    training = experiment_training(experiment)
    epochs, every = training["epochs"], training["checkpoint_every"]
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def model_settings():
    return {key: config[key] for key in ("model", "lora", "sampler")}


def train_settings(wildcards):
    """`d3po train --settings`: one run (experiment x method x seed)."""
    experiment = config["experiments"][wildcards.experiment]
    return model_settings() | {
        "method": wildcards.method,
        "seed": int(wildcards.seed),
        "prompts": config["prompts"][experiment["prompts"]],
        "objectives": experiment["objectives"],
        "proxy_options": {
            name: config["proxies"][name]
            for name in experiment["objectives"]
            if name in config["proxies"]
        },
        "training": experiment_training(wildcards.experiment),
        "d3po": config["d3po"],
        "ddpo": config["ddpo"],
    }


def sample_settings(wildcards=None):
    """`d3po sample --settings`: the held-out evaluation prompts and seed (same for every model)."""
    evaluation = config["evaluation"]
    return model_settings() | {
        "prompts": config["prompts"][evaluation["prompts"]],
        "images_per_prompt": evaluation["images_per_prompt"],
        "seed": evaluation["seed"],
    }


def judging_sample_settings(wildcards):
    """`d3po sample --settings` for the set a judged experiment's people compare."""
    judgements = config["experiments"][wildcards.experiment]["judgements"]
    return model_settings() | {
        "prompts": config["prompts"][judgements["prompts"]],
        "images_per_prompt": judgements["images_per_prompt"],
        "seed": judgements["seed"],
    }


def judged_inputs(wildcards):
    """Extra inputs of a judged experiment's training: the set and its judgements."""
    judgements = config["experiments"][wildcards.experiment].get("judgements")
    if not judgements:
        return {}
    folder = f"{RESULTS}/feedback/{wildcards.experiment}"
    return {
        "samples": f"{folder}/samples",
        "judgements": judgements["file"] or f"{folder}/simulated.jsonl",
    }


def judged_arguments(wildcards, input):
    if "judgements" not in input.keys():
        return ""
    return f"--samples {input.samples} --judgements {input.judgements}"


def as_json(function):
    """A params function that renders ``function(wildcards)`` as one-line JSON."""
    return lambda wildcards: json.dumps(function(wildcards), separators=(",", ":"))


def proxy_options(wildcards):
    return config["proxies"].get(wildcards.proxy, {})


# ------------------------------------------------------------------------- paths and targets


def run_dir(experiment, method, seed):
    return f"{RESULTS}/train/{experiment}/{method}/seed{seed}"


def checkpoint_samples_dir(experiment, method, seed, epoch):
    return f"{RESULTS}/samples/{experiment}/{method}/seed{seed}/epoch{epoch}"


def checkpoint_sample_dirs(experiment):
    """{'epochE': sample set folder} of every checkpoint of a run of ``experiment`` (with the
    method and seed left as wildcards): the outputs of sample_checkpoints_{experiment}.
    """
    return {
        f"epoch{epoch}": directory(
            checkpoint_samples_dir(experiment, "{method}", "{seed}", epoch)
        )
        for epoch in checkpoint_epochs(experiment)
    }


def checkpoint_arguments(wildcards, input, output):
    """`d3po sample --checkpoint ADAPTER=DIR ...`: each saved adapter and its sample set."""
    return " ".join(
        f"{input.checkpoints}/epoch_{int(name.removeprefix('epoch')):04d}={output[name]}"
        for name in output.keys()
    )


def score_csvs(sample_set):
    """Score tables of one sample set (a path under results/samples) for every evaluation proxy."""
    return [
        f"{RESULTS}/scores/{sample_set}/{proxy}.csv"
        for proxy in config["evaluation"]["proxies"]
    ]


def evaluation_runs(experiment):
    """`d3po collect --runs`: the base model and every checkpoint of every method and seed."""
    training = experiment_training(experiment)
    images_per_epoch = training["prompts_per_epoch"] * training["images_per_prompt"]
    judgements = config["experiments"][experiment].get("judgements")
    if judgements:  # one pass over the judged set per epoch
        prompts = config["prompts"][judgements["prompts"]]
        images_per_epoch = len(prompts) * judgements["images_per_prompt"]
    runs = [
        {
            "experiment": experiment,
            "method": "base",
            "seed": 0,
            "epoch": 0,
            "samples_seen": 0,
            "scores": score_csvs("base"),
        }
    ]
    settings = config["experiments"][experiment]
    for method in settings["methods"]:
        for seed in settings["seeds"]:
            for epoch in checkpoint_epochs(experiment):
                sample_set = f"{experiment}/{method}/seed{seed}/epoch{epoch}"
                runs.append(
                    {
                        "experiment": experiment,
                        "method": method,
                        "seed": seed,
                        "epoch": epoch,
                        "samples_seen": epoch * images_per_epoch,
                        "scores": score_csvs(sample_set),
                    }
                )
    return runs


def evaluation_scores(wildcards):
    return [
        path for run in evaluation_runs(wildcards.experiment) for path in run["scores"]
    ]


def final_samples(wildcards):
    """Samples of the last checkpoint of the first seed, one folder per method."""
    settings = config["experiments"][wildcards.experiment]
    epoch = checkpoint_epochs(wildcards.experiment)[-1]
    seed = settings["seeds"][0]
    return {
        method: checkpoint_samples_dir(wildcards.experiment, method, seed, epoch)
        for method in settings["methods"]
    }


def training_metrics(wildcards):
    """Training metrics of the first seed, one table per method."""
    settings = config["experiments"][wildcards.experiment]
    seed = settings["seeds"][0]
    return {
        method: f"{run_dir(wildcards.experiment, method, seed)}/metrics.csv"
        for method in settings["methods"]
    }


def labelled(paths):
    """A params function: 'METHOD=PATH ...' for the per-method inputs named by ``paths``."""
    return lambda wildcards, input: " ".join(
        f"{method}={input[method]}" for method in paths(wildcards)
    )


def headline_objectives():
    """{experiment: the proxy its results-table row leads with (its first objective)}."""
    return {
        name: experiment["objectives"][0]
        for name, experiment in config["experiments"].items()
    }


def evaluation_tables():
    return expand(
        f"{RESULTS}/{{experiment}}/evaluation.csv", experiment=config["experiments"]
    )


def all_targets():
    per_experiment = ["evaluation.csv", "curves.png", "samples.png"]
    return [
        f"{RESULTS}/{experiment}/{name}"
        for experiment in config["experiments"]
        for name in per_experiment
    ] + [f"{RESULTS}/results_table.csv", f"{RESULTS}/results_table.md"]


def training_launcher(gpus):
    """`d3po`, or torchrun with one process per GPU when a training job has several."""
    if int(gpus) > 1:
        return f"torchrun --standalone --nproc_per_node {int(gpus)} -m d3po"
    return "d3po"


def job_resources(kind, sample_sets=1):
    """Cluster resources of one kind of job (sample, train, evaluate, smoke), from the config's
    `resources:` section: the one place for the amounts. The slurm profile adds only site
    values (account, partition names and limits, profiles/slurm/partitions.yaml), and the
    executor picks the partition from these amounts: a job asking for a GPU goes to a
    partition that has GPUs. A job of ``sample_sets`` sample sets gets that many times the
    time of one."""
    amounts = config["resources"][kind]
    return {
        "gpu": amounts["gpu"],
        "runtime": sample_sets * minutes(amounts["runtime"]),
        "mem_mb": amounts["mem_mb"],
        "cpus_per_task": amounts["cpus_per_task"],
    }


def job_threads(kind):
    """Threads of one kind of job: its cpus_per_task, so that torch uses every core asked for
    (Snakemake exports OMP_NUM_THREADS={threads})."""
    return config["resources"][kind]["cpus_per_task"]


def minutes(runtime):
    """A runtime of the config (minutes, or a string with a unit such as "8h") in minutes."""
    if isinstance(runtime, int) or runtime.isdigit():
        return int(runtime)
    from humanfriendly import parse_timespan

    return round(parse_timespan(runtime) / 60)


# ------------------------------------------------------------------------- wildcards


def alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    experiment=alternatives(config["experiments"]),
    method=alternatives(METHODS),
    seed=r"\d+",
    epoch=r"[1-9]\d*",
    # `d3po score` scores the registered proxies; external ones come from the user's rules.
    proxy=alternatives(
        REGISTERED_PROXIES
        or set(config["evaluation"]["proxies"]) - set(config["external_proxies"])
    ),
    sample_set=r"base|[^/]+/[^/]+/seed\d+/epoch\d+",
