"""Config validation, the per-job settings documents, target lists and wildcard constraints.

Config flows one way: config/*.yaml -> ../schemas/config.schema.yaml (fills the defaults) ->
the checks below (fail before any job, naming the field) -> one JSON settings document per job
(docs/design.md) -> `d3po <step> --settings ...`.
"""

import json
import os
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# ------------------------------------------------------------------------- schema


def config_files():
    """This run's config files, the one that wins first (--configfile over the Snakefile's),
    relative to the working directory when they are under it."""
    given = [str(path) for path in workflow.overwrite_configfiles or []]
    files = list(reversed(given)) + [
        str(path) for path in workflow.configfiles if str(path) not in given
    ]
    relative = [os.path.relpath(path) for path in files]
    return [r if not r.startswith("..") else f for r, f in zip(relative, files)]


def yaml_line(path, keys):
    """Line (1-based) of the entry at ``keys`` in YAML file ``path``, or None if absent."""
    try:
        node = yaml.compose(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == str(key)]
            if not found:
                return None
            line, node = found[0][0].start_mark.line + 1, found[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return None
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return None
    return line


def field_name(keys):
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(
        "."
    )


def config_location(keys):
    """'FILE line N' of the config file that sets the entry at ``keys``, or 'config'."""
    for path in config_files():
        line = yaml_line(path, keys)
        if line is not None:
            return f"{path} line {line}"
    return "config"


def schema_error_line(error):
    """One line: the config file (and line), the field, the bad value and what is allowed
    (jsonschema's message says it, except for an unknown field: then list the known ones).
    """
    keys, value, problem = list(error.absolute_path), error.instance, error.message
    allowed = ""
    if error.validator == "additionalProperties" and isinstance(value, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(known))
        keys, value = keys + unknown[:1], value[unknown[0]] if unknown else value
        problem = "unknown field"
        allowed = f"allowed fields: {', '.join(known)}"
    where = config_location(keys)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    message = f"{where}: {field_name(keys) or '(top level)'} = {shown}: {problem}"
    return f"{message}; {allowed}" if allowed else message


def check_schema(schema_file):
    """The schema's first complaint as one line (Snakemake's own message dumps the schema)."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise WorkflowError(schema_error_line(error))


check_schema(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
validate(config, "../schemas/config.schema.yaml")  # fills in the defaults

METHODS = ("d3po", "ddpo")
RESULTS = config["results_dir"]


# ------------------------------------------------------------------------- config checks


def registered_proxy_names():
    """Proxy names `d3po score` knows, or None when the package cannot be imported here."""
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
    check_proxy_options()
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
    if config["model"]["source"] == "toy":
        check_toy_prompts()
    check_model(files=False)


def check_proxy_options():
    """Options under proxies.NAME must be ones proxy NAME declares, with the declared type."""
    if REGISTERED_PROXIES is None:
        return
    from d3po.errors import ConfigError
    from d3po.rewards import check_proxy_options as check_options

    for name, options in config["proxies"].items():
        if name not in REGISTERED_PROXIES:
            continue  # scored by the user's own rules, which own their options
        try:
            check_options(name, options, where=f"proxies.{name}")
        except ConfigError as error:
            location = config_location(["proxies", name])
            raise WorkflowError(f"{location}: {error}") from None


def check_model(files=True):
    """The model loads: a local folder exists; with ``files``, the folder or the cached hub copy
    holds whole weights files (read from their headers only)."""
    from d3po.models import ModelNotFoundError, check_model_files, check_source

    model = config["model"]
    try:
        if files:
            check_model_files(
                model["source"], model["revision"], model["local_files_only"]
            )
        else:
            check_source(model["source"])
    except ModelNotFoundError as error:
        raise WorkflowError(str(error)) from None


# The model's files are checked when a run starts, before its first job (and before Snakemake
# removes the old outputs of any job); a dry run only plans, so it also works on a machine
# that does not hold the weights, e.g. to plan config/paper.yaml.
onstart:
    check_model()


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


REGISTERED_PROXIES = registered_proxy_names()
check_config(config)


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


def job_resources(kind, name):
    """A resource of one kind of job (sample, train, evaluate) from config 'resources'."""
    return lookup(dpath=f"resources/{kind}/{name}", within=config)


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
