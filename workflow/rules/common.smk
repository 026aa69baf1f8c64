"""Config validation, the per-job settings documents, target lists and wildcard constraints.

Config flows one way: config/*.yaml -> ../schemas/config.schema.yaml (fills the defaults) ->
the checks below (fail before any job, naming the field) -> one JSON settings document per job
(docs/design.md) -> `d3po <step> --settings ...`.

The checks run once the users' proxy rules are included (proxy_rules.smk calls check_config),
since the names of rule-based proxies come from those rules.
"""

import json
import os
import re
import shlex
import shutil
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
        renamed = error.schema.get("x-renamed", {}).get(keys[-1]) if unknown else None
        problem = (
            f"unknown field (renamed to {renamed})" if renamed else "unknown field"
        )
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

# normalised as Path() writes paths, which some inputs are built with: "./out/" -> "out"
RESULTS = os.path.normpath(config["results_dir"])


def job_environment():
    """The conda environment file the d3po rules run in (with --sdm conda), holding the package
    of this checkout, installed by its absolute path. A relative `-e ../..` in a static file
    breaks under --conda-prefix (Snakemake resolves it from where it puts the file), so the
    file is written from workflow/envs/d3po.yaml into .snakemake/ with the path filled in.
    """
    checkout = Path(workflow.basedir).resolve()
    template = (checkout / "workflow" / "envs" / "d3po.yaml").read_text()
    text = template.replace("-e ../..", f"-e {checkout}")
    target = Path(".snakemake", "d3po-env", "d3po.yaml").resolve()
    if not target.is_file() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(target)


JOB_ENV = job_environment()


# ------------------------------------------------------------------------- config checks


def registered_proxy_names():
    """Proxy names `d3po score` knows, or None when the package (or torch, which it imports)
    cannot be imported here; the checks that need the package are then skipped."""
    try:
        from d3po.rewards import proxy_names
    except ImportError as error:
        logger.warning(
            f"Cannot import d3po ({error}); the names of proxies, methods and simulated "
            "annotators' criteria are not checked before the run. "
            "Install the package (pip install -e .) in the environment that runs Snakemake."
        )
        return None
    return list(proxy_names())


def registered_methods():
    """{name: method class} of the d3po.methods package: the one list of methods (None when the
    package cannot be imported here: registered_proxy_names warned)."""
    try:
        from d3po.methods import method_classes
    except ImportError:
        return None
    return method_classes()


def check_config(config):
    """Fail before any job, naming the field, on mistakes the schema cannot see."""
    lists = sorted(config["prompts"])

    def check_prompt_list(field, name):
        if name not in config["prompts"]:
            raise WorkflowError(
                f"{field}: unknown prompt list '{name}'; known lists (config 'prompts'): "
                f"{', '.join(lists) or 'none'}"
            )

    check_method_options()
    check_prompt_list("evaluation.prompts", config["evaluation"]["prompts"])
    check_proxies("evaluation.proxies", config["evaluation"]["proxies"])
    check_proxies("proxies", config["proxies"])
    check_proxy_options()
    if "base" in config["experiments"]:
        raise WorkflowError(
            f"{config_location(['experiments', 'base'])}: experiments.base: 'base' names the "
            "untrained model's sample set (results/samples/base); name the experiment otherwise"
        )
    for name, experiment in config["experiments"].items():
        check_prompt_list(f"experiments.{name}.prompts", experiment["prompts"])
        check_proxies(f"experiments.{name}.objectives", experiment["objectives"])
        check_methods(name, experiment)
        check_experiment_method_options(name, experiment)
        if experiment.get("judgements"):
            check_judged_experiment(name, experiment)
        else:
            check_online_objectives(name, experiment)
        check_objectives_evaluated(name, experiment)
    check_paper()
    # without the package here (a warning said so), the checks below cannot run
    if REGISTERED_PROXIES is None:
        return
    if config["model"]["source"] == "toy":
        check_toy_prompts()
    check_scored_prompts()
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
            check_options(name, options)
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


def known_proxies():
    """Registered and rule-based proxy names, or None when d3po cannot be imported here."""
    if REGISTERED_PROXIES is None:
        return None
    return sorted(set(REGISTERED_PROXIES) | set(RULE_PROXIES))


def check_proxies(field, names):
    known = known_proxies()
    unknown = [] if known is None else [name for name in names if name not in known]
    if unknown:
        raise WorkflowError(
            f"{field}: unknown proxy {', '.join(map(repr, unknown))}; known proxies: "
            f"{', '.join(known)} (add your own as a function or as a rule listed in config "
            "'proxy_rules': README, 'Add a proxy')"
        )


def check_objectives_evaluated(name, experiment):
    """The results table leads with an experiment's objective and the curves plot it: every
    objective is among the proxies the checkpoints are scored with."""
    evaluated = config["evaluation"]["proxies"]
    missing = [proxy for proxy in experiment["objectives"] if proxy not in evaluated]
    if missing:
        keys = ["experiments", name, "objectives"]
        raise WorkflowError(
            f"{config_location(keys)}: {field_name(keys)}: {', '.join(map(repr, missing))} "
            f"is not scored by the evaluation; add it to evaluation.proxies "
            f"({', '.join(evaluated)})"
        )


def check_paper():
    """Every paper number is shown: it names an experiment and 'base' or one of its methods."""
    for name, values in config["paper"].items():
        experiment = config["experiments"].get(name)
        if experiment is None:
            raise WorkflowError(
                f"{config_location(['paper', name])}: paper.{name}: no experiment '{name}' "
                f"(experiments: {', '.join(config['experiments'])})"
            )
        methods = ["base", *experiment["methods"]]
        for method in values:
            if method not in methods:
                raise WorkflowError(
                    f"{config_location(['paper', name, method])}: paper.{name}.{method}: "
                    f"experiment {name} trains no method {method} ({', '.join(methods)})"
                )


def check_online_objectives(name, experiment):
    """Online training scores every epoch's samples in the loop: rule-based proxies cannot."""
    by_rule = [proxy for proxy in experiment["objectives"] if proxy in RULE_PROXIES]
    if by_rule:
        proxy = by_rule[0]
        raise WorkflowError(
            f"experiments.{name}.objectives: '{proxy}' is a rule-based proxy "
            f"({RULE_PROXIES[proxy]}), which the online training loop cannot call every "
            f"epoch; train on it in proxy-scored rounds instead: "
            f"judgements: {{prompts: ..., proxy: {proxy}, rounds: N}}"
        )


FEEDBACK_SOURCES = ("file", "simulate", "proxy")


# The model's files and the `d3po` command are checked when a run starts, before its first job
# (and before Snakemake removes the old outputs of any job); a dry run only plans, so it also
# works on a machine that holds neither, e.g. to plan config/paper.yaml on a login node.
onstart:
    check_d3po_command()
    check_model()


def check_method_options():
    """Each block of config 'methods' names a method and holds only its declared options."""
    if METHOD_CLASSES is None:
        return
    for name, options in config["methods"].items():
        check_method_name(["methods", name], name)
        check_options_of(name, options, ["methods", name])


def check_options_of(method, options, keys):
    """The method declares every option and its type; else one line: file and line, field."""
    from d3po.methods import parse_options

    try:
        parse_options(method, options, field_name(keys))
    except ValueError as error:
        raise WorkflowError(f"{config_location(keys)}: {error}") from None


def check_method_name(keys, name):
    """A method the package registers; else one line: config file and line, field, value."""
    if name not in METHOD_CLASSES:
        raise WorkflowError(
            f"{config_location(keys)}: {field_name(keys)} = {name!r}: unknown method; "
            f"known methods: {', '.join(METHOD_CLASSES)}"
        )


def check_methods(name, experiment):
    """Each method of an experiment is known and can run on its feedback."""
    if METHOD_CLASSES is None:
        return
    from d3po.methods import judged_methods

    field = f"experiments.{name}"
    judged = bool(experiment.get("judgements"))
    for index, method in enumerate(experiment["methods"]):
        check_method_name(["experiments", name, "methods", index], method)
        declared = METHOD_CLASSES[method]
        if judged and not declared.accepts_judgements:
            raise WorkflowError(
                f"{field}.methods: {method} does not train on human judgements (it needs a "
                f"{declared.signal} from a proxy); a judged experiment takes "
                f"{', '.join(judged_methods())}"
            )
        if declared.signal == "reward" and len(experiment["objectives"]) != 1:
            raise WorkflowError(
                f"{field}.objectives: {method} needs exactly one objective (a scalar "
                f"reward), got {len(experiment['objectives'])}; drop {method} from "
                f"{field}.methods or keep one objective"
            )


def check_experiment_method_options(name, experiment):
    """experiments.NAME.method_options: options of the experiment's own methods only."""
    if METHOD_CLASSES is None:
        return
    for method in experiment["method_options"]:
        keys = ["experiments", name, "method_options", method]
        if method not in experiment["methods"]:
            raise WorkflowError(
                f"{config_location(keys)}: {field_name(keys)}: {method} is not one of "
                f"experiments.{name}.methods ({', '.join(experiment['methods'])})"
            )
        check_options_of(method, method_options(name, method), keys)


def check_criterion(keys, criterion):
    """A criterion the simulated annotator knows; else one line: config file and line, field."""
    from d3po.errors import ConfigError
    from d3po.judges import criterion_judge

    try:
        criterion_judge(criterion)
    except ConfigError as error:
        raise WorkflowError(
            f"{config_location(keys)}: {field_name(keys)}: {error}"
        ) from None


def check_judged_experiment(name, experiment):
    """Feedback rounds train on judged sets: say what is missing or contradictory."""
    field = f"experiments.{name}"
    judgements = experiment["judgements"]
    if judgements["prompts"] not in config["prompts"]:
        raise WorkflowError(
            f"{field}.judgements.prompts: unknown prompt list '{judgements['prompts']}'"
        )
    sources = [source for source in FEEDBACK_SOURCES if judgements.get(source)]
    if len(sources) != 1:
        raise WorkflowError(
            f"{field}.judgements: set exactly one of 'file' (people's JSON Lines), "
            "'simulate' (the toy world's annotator) and 'proxy' (a proxy's score order); "
            f"got {', '.join(sources) or 'none'}"
        )
    rounds = judgements["rounds"]
    if judgements["file"] and rounds > 1 and "{round}" not in judgements["file"]:
        raise WorkflowError(
            f"{field}.judgements.file: with rounds: {rounds} each round needs its own file; "
            f"write the round number as {{round}}, e.g. labels/{name}_round{{round}}.jsonl"
        )
    if judgements["proxy"]:
        check_proxies(f"{field}.judgements.proxy", round_proxies(name))
    if judgements["simulate"] and REGISTERED_PROXIES is not None:  # d3po imports here
        check_criterion(
            ["experiments", name, "judgements", "simulate"], judgements["simulate"]
        )
    if rounds > 1 and len(experiment["seeds"]) != 1:
        raise WorkflowError(
            f"{field}.seeds: round 2 samples from round 1's adapter, one per seed; "
            f"with rounds: {rounds} train one seed (seeds: [{experiment['seeds'][0]}])"
        )
    if rounds > 1 and len(experiment["methods"]) != 1:
        raise WorkflowError(
            f"{field}.methods: round 2 samples from round 1's adapter, which one method "
            f"trained; with rounds: {rounds} train one method "
            f"(methods: [{experiment['methods'][0]}])"
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


def scored_prompt_lists():
    """(config keys, prompt list, proxies) of each set the workflow scores: the evaluation's,
    an online experiment's epochs, a round's (by its proxies or the simulated annotator).
    """
    from d3po.judges import criterion_proxy

    evaluation = config["evaluation"]
    yield ["evaluation", "proxies"], evaluation["prompts"], evaluation["proxies"]
    for name, experiment in config["experiments"].items():
        judgements = experiment.get("judgements") or {}
        keys = ["experiments", name, "judgements"]
        if not judgements:
            keys = ["experiments", name, "objectives"]
            yield keys, experiment["prompts"], experiment["objectives"]
        elif judgements.get("proxy"):
            yield keys + ["proxy"], judgements["prompts"], round_proxies(name)
        elif judgements.get("simulate"):
            criterion = criterion_proxy(judgements["simulate"])
            yield keys + ["simulate"], judgements["prompts"], [criterion]


def check_scored_prompts():
    """A proxy that reads the prompt (the toy judges, and so the simulated annotator) must know
    every prompt it scores; else a sample set is made, maybe for hours, before its job fails.
    A rule-based proxy is skipped (its rule reads what it needs); a proxy's check raises
    ConfigError, or a plain ValueError when a user wrote it.
    """
    from d3po.rewards import check_prompts

    for keys, prompt_list, proxies in scored_prompt_lists():
        for proxy in [name for name in proxies if name in REGISTERED_PROXIES]:
            try:
                check_prompts(proxy, config["prompts"][prompt_list])
            except ValueError as error:
                raise WorkflowError(
                    f"{config_location(keys)}: {field_name(keys)}: '{proxy}' cannot score "
                    f"prompt list '{prompt_list}': {error}"
                ) from None


def check_d3po_command():
    """Every job runs `d3po`, found on the PATH it inherits from this shell (Slurm exports the
    submitting environment): without it each job would fail, said only in its log."""
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    deployment = workflow.deployment_settings
    uses_conda = (
        deployment is not None
        and DeploymentMethod.CONDA in deployment.deployment_method
    )
    if uses_conda or shutil.which("d3po"):
        return
    raise WorkflowError(
        "`d3po` is not on the PATH, and every job runs it: activate the environment it is "
        "installed in (source .venv/bin/activate, or conda activate d3po) and run again, or "
        "run with --sdm conda."
    )


REGISTERED_PROXIES = registered_proxy_names()
# {name: rule file} of the users' rule-based proxies, filled by proxy_rules.smk
RULE_PROXIES = {}


# ------------------------------------------------------------------------- users' proxy rules

# (the wildcard carries the global sample_set constraint once the rule is defined)
SCORE_OUTPUT = re.compile(
    re.escape(f"{RESULTS}/scores/") + r"\{sample_set(?:,.*)?\}/(\w+)\.csv"
)


def proxy_rule_file(path):
    """The absolute path of a listed rule file (an include would resolve it from here)."""
    if not Path(path).is_file():
        raise WorkflowError(
            f"proxy_rules: '{path}' does not exist (paths are relative to the working "
            f"directory, {Path.cwd()})"
        )
    return str(Path(path).resolve())


def register_rule_proxies(path, rules):
    """Record the proxy each of ``rules`` (included from ``path``) writes a score table for."""
    names = [
        match[1]
        for rule in rules
        for output in rule.output
        if (match := SCORE_OUTPUT.fullmatch(str(output)))
    ]
    if not names:
        raise WorkflowError(
            f"proxy_rules: '{path}' has no rule writing {RESULTS}/scores/{{sample_set}}/NAME.csv"
        )
    for included in rules:
        check_conda_file(path, included)
    for name in names:
        if name in (REGISTERED_PROXIES or ()) or name in RULE_PROXIES:
            raise WorkflowError(
                f"proxy_rules: '{path}' writes scores of '{name}', a proxy that "
                f"{RULE_PROXIES.get(name, 'd3po.rewards')} already provides; rename it"
            )
        RULE_PROXIES[name] = path


def check_conda_file(path, rule):
    """The environment file of a rule's `conda:` is there (relative to its rules file, as
    Snakemake reads it); Snakemake finds it missing only after the job ran, and drops its output.
    """
    env = rule.conda_env
    if not isinstance(env, str) or not env.endswith((".yaml", ".yml")) or "{" in env:
        return  # a named environment, a folder, a function or a pattern: Snakemake's to check
    env_file = Path(path).parent / env
    if not env_file.is_file():
        raise WorkflowError(
            f"proxy_rules: '{path}': conda environment file '{env_file}' "
            f"(of rule {rule.name}) does not exist"
        )


METHOD_CLASSES = registered_methods()


# ------------------------------------------------------------------------- settings documents


def experiment_training(experiment):
    """The top-level training fields with the experiment's overrides applied."""
    return config["training"] | config["experiments"][experiment]["training"]


def method_options(experiment, method):
    """The top-level options of ``method`` with the experiment's overrides applied."""
    overrides = config["experiments"][experiment]["method_options"].get(method, {})
    return config["methods"].get(method, {}) | overrides


def checkpoint_epochs(experiment):
    """Epochs with a saved adapter: every checkpoint_every epochs, plus the last (never 0).

    Feedback rounds count on: round r's local epoch e is epoch (r - 1) * epochs + e.
    """
    training = experiment_training(experiment)
    epochs, every = training["epochs"], training["checkpoint_every"]
    local = sorted(set(range(every, epochs + 1, every)) | {epochs})
    rounds = feedback_rounds(experiment) or 1
    return [(r - 1) * epochs + e for r in range(1, rounds + 1) for e in local]


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
        "method_options": method_options(wildcards.experiment, wildcards.method),
    }


def sample_settings(wildcards=None):
    """`d3po sample --settings`: the held-out evaluation prompts and seed (same for every model)."""
    evaluation = config["evaluation"]
    return model_settings() | {
        "prompts": config["prompts"][evaluation["prompts"]],
        "images_per_prompt": evaluation["images_per_prompt"],
        "seed": evaluation["seed"],
    }


def proxy_options(wildcards=None):
    """`--options` of the score and collect jobs: each proxy's options from config 'proxies'."""
    return config["proxies"]


def as_json(function):
    """A params function that renders ``function(wildcards)`` as one-line JSON."""
    return lambda wildcards: json.dumps(function(wildcards), separators=(",", ":"))


def unevaluated_registered_proxies():
    """Registered proxies the evaluation does not list (a round may judge by one of them).
    Without the package here, the rounds' proxies that no rule of the config writes."""
    listed = config["evaluation"]["proxies"]
    if REGISTERED_PROXIES is None:
        rounds = [
            name
            for experiment, settings in config["experiments"].items()
            if (settings.get("judgements") or {}).get("proxy")
            for name in round_proxies(experiment)
        ]
        candidates = [name for name in rounds if name not in RULE_PROXIES]
    else:
        candidates = REGISTERED_PROXIES
    return sorted({name for name in candidates if name not in listed})


def evaluated_registered_proxies():
    """The evaluation's proxies that `d3po score` knows (all but the rule-based ones): one
    score job writes all their tables for a sample set."""
    return [
        name for name in config["evaluation"]["proxies"] if name not in RULE_PROXIES
    ]


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


def checkpoint_arguments(experiment):
    """`d3po sample --checkpoint ADAPTER=DIR ...`: each saved adapter and its sample set."""

    def arguments(wildcards, output):
        return [
            f"{checkpoint_adapter(experiment, wildcards.method, wildcards.seed, name.removeprefix('epoch'))}"
            f"={output[name]}"
            for name in output.keys()
        ]

    return arguments


def score_csvs(sample_set):
    """Score tables of one sample set (a path under results/samples) for every evaluation proxy."""
    return [
        f"{RESULTS}/scores/{sample_set}/{proxy}.csv"
        for proxy in config["evaluation"]["proxies"]
    ]


def evaluation_runs(experiment):
    """`d3po collect --runs`: the base model and every checkpoint of every method and seed.

    A checkpoint of a feedback round carries its round number (the base model round 0).
    """
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
            "samples": f"{RESULTS}/samples/base",
        }
        | ({"round": 0} if judgements else {})
    ]
    settings = config["experiments"][experiment]
    for method in settings["methods"]:
        for seed in settings["seeds"]:
            for epoch in checkpoint_epochs(experiment):
                sample_set = f"{experiment}/{method}/seed{seed}/epoch{epoch}"
                run = {
                    "experiment": experiment,
                    "method": method,
                    "seed": seed,
                    "epoch": epoch,
                    "samples_seen": epoch * images_per_epoch,
                    "scores": score_csvs(sample_set),
                    "samples": f"{RESULTS}/samples/{sample_set}",
                }
                if judgements:
                    run["round"] = round_of_epoch(experiment, epoch)[0]
                runs.append(run)
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
    """Training metrics of the first seed, one table per method (none for feedback rounds,
    whose epochs have no training reward to plot)."""
    settings = config["experiments"][wildcards.experiment]
    if settings.get("judgements"):
        return {}
    seed = settings["seeds"][0]
    return {
        method: f"{run_dir(wildcards.experiment, method, seed)}/metrics.csv"
        for method in settings["methods"]
    }


def labelled(paths):
    """A params function: [METHOD=PATH, ...] for the per-method inputs named by ``paths``."""
    return lambda wildcards, input: [
        f"{method}={input[method]}" for method in paths(wildcards)
    ]


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
        "runtime": sample_sets * runtime_minutes(kind),
        "mem_mb": amounts["mem_mb"],
        "cpus_per_task": amounts["cpus_per_task"],
    }


def job_threads(kind):
    """Threads of one kind of job: its cpus_per_task, so that torch uses every core asked for
    (Snakemake exports OMP_NUM_THREADS={threads})."""
    return config["resources"][kind]["cpus_per_task"]


def runtime_minutes(kind):
    """resources.KIND.runtime in minutes: minutes, or a number with a unit ("8h", "90 min");
    anything else (Slurm's "08:00:00", a bare "1.5") is a one-line error naming the field.
    """
    runtime = config["resources"][kind]["runtime"]
    if isinstance(runtime, int) or runtime.isdigit():
        return int(runtime)
    from humanfriendly import InvalidTimespan, parse_timespan

    # humanfriendly reads a number without a unit ("90", "1.5") as seconds
    has_unit = re.search(r"[a-z]\s*$", runtime, re.I)
    try:
        seconds = parse_timespan(runtime) if has_unit else 0
    except InvalidTimespan:
        seconds = 0
    if seconds < 60:
        raise WorkflowError(
            f"{config_location(['resources', kind, 'runtime'])}: resources.{kind}.runtime: "
            f"{runtime!r} is not a runtime; give minutes (90) or a number with a unit (8h, 90m)"
        )
    return round(seconds / 60)


# ------------------------------------------------------------------------- feedback rounds


def feedback_rounds(experiment):
    """Number of feedback rounds of an experiment with judgements, else 0 (online)."""
    judgements = config["experiments"][experiment].get("judgements")
    return judgements["rounds"] if judgements else 0


def round_proxies(experiment):
    """The proxies whose score order judges a proxy-scored round (one name or a list)."""
    proxy = config["experiments"][experiment]["judgements"]["proxy"]
    return [proxy] if isinstance(proxy, str) else list(proxy)


def round_set(experiment, number):
    """Round ``number``'s set to judge: a sample set with trajectories, scored like any."""
    return f"{RESULTS}/samples/feedback/{experiment}/round{number}"


def round_run_dir(experiment, method, seed, number):
    return f"{RESULTS}/train/{experiment}/{method}/seed{seed}/round{number}"


def round_of_epoch(experiment, epoch):
    """(round, epoch within the round) of a checkpoint numbered across rounds."""
    epochs = experiment_training(experiment)["epochs"]
    return (int(epoch) - 1) // epochs + 1, (int(epoch) - 1) % epochs + 1


def checkpoint_adapter(experiment, method, seed, epoch):
    """The saved adapter of checkpoint ``epoch`` of a run; in feedback rounds, epochs count on
    across rounds and each round saves in its own folder, numbered within the round."""
    if not feedback_rounds(experiment):
        return f"{run_dir(experiment, method, seed)}/checkpoints/epoch_{int(epoch):04d}"
    number, local = round_of_epoch(experiment, epoch)
    return f"{round_run_dir(experiment, method, seed, number)}/checkpoints/epoch_{local:04d}"


def checkpoint_folders(experiment):
    """Input of sample_checkpoints_{experiment}: a run's checkpoints folders (one per round)."""

    def folders(wildcards):
        adapters = [
            checkpoint_adapter(experiment, wildcards.method, wildcards.seed, epoch)
            for epoch in checkpoint_epochs(experiment)
        ]
        return sorted({str(Path(adapter).parent) for adapter in adapters})

    return folders


def round_method(experiment):
    """The method whose adapter samples the next round (the config check allows one method
    when there are several rounds)."""
    return config["experiments"][experiment]["methods"][0]


def final_adapter(experiment, seed, number):
    """The last checkpoint of round ``number`` (what round ``number`` + 1 starts from)."""
    epochs = experiment_training(experiment)["epochs"]
    method = round_method(experiment)
    return f"{round_run_dir(experiment, method, seed, number)}/checkpoints/epoch_{epochs:04d}"


def round_start(wildcards):
    """Inputs of round r's sampling and training: round r-1's checkpoints (none for r = 1)."""
    number = int(wildcards.round)
    if number == 1:
        return {}
    seed = wildcards.get(
        "seed", config["experiments"][wildcards.experiment]["seeds"][0]
    )
    method = round_method(wildcards.experiment)
    folder = round_run_dir(wildcards.experiment, method, seed, number - 1)
    return {"previous": f"{folder}/checkpoints"}


def round_start_argument(option):
    """A params function: [option, ADAPTER] for rounds after the first, else []."""

    def argument(wildcards, input):
        if "previous" not in input.keys():
            return []
        epochs = experiment_training(wildcards.experiment)["epochs"]
        return [option, f"{input.previous}/epoch_{epochs:04d}"]

    return argument


def judging_sample_settings(wildcards):
    """`d3po sample --settings` for round r's set: new initial noises every round."""
    judgements = config["experiments"][wildcards.experiment]["judgements"]
    return model_settings() | {
        "prompts": config["prompts"][judgements["prompts"]],
        "images_per_prompt": judgements["images_per_prompt"],
        "seed": judgements["seed"] + int(wildcards.round) - 1,
    }


def label_command(experiment, number):
    """The `d3po label` command people run to judge round ``number``'s set."""
    judgements = config["experiments"][experiment]["judgements"]
    samples = shlex.quote(round_set(experiment, number))
    return (
        f"d3po label {samples} --judgements "
        f"{shlex.quote(people_judgements_file(experiment, number))} --protocol "
        f"{judgements['protocol']} --annotators-per-prompt {judgements['annotators_per_prompt']}"
    )


def people_judgements_file(experiment, number):
    return config["experiments"][experiment]["judgements"]["file"].replace(
        "{round}", str(number)
    )


def complete_people_judgements(experiment, number):
    """Round ``number``'s people's judgements file, once every prompt is judged.

    Until then the workflow stops here, before training, with the command that judges the
    set and how many prompts are left (sampling the set itself needs no judgement). A file
    that exists before its set is sampled (judged elsewhere) is taken as it is: the set is
    sampled first and training checks every judged id against it.
    """
    path = people_judgements_file(experiment, number)
    samples = round_set(experiment, number)
    command = label_command(experiment, number)
    if not Path(samples, "manifest.csv").is_file():
        if Path(path).is_file():
            return path
        raise WorkflowError(
            f"experiments.{experiment}: round {number} is not judged yet: sample its set with "
            f"`snakemake {shlex.quote(samples)}`, then judge it with `{command}`"
        )
    from d3po.feedback import judging_progress

    needed = config["experiments"][experiment]["judgements"]["annotators_per_prompt"]
    remaining, total = judging_progress(samples, path, needed)
    if remaining:
        raise WorkflowError(
            f"{path}: {remaining} of {total} prompts of round {number} of {experiment} still "
            f"need judging ({needed} annotator(s) each): run `{command}`, then snakemake again"
        )
    return path


def round_feedback(wildcards):
    """Inputs of round r's training: its set and the judgements or the proxy scores on it."""
    experiment, number = wildcards.experiment, int(wildcards.round)
    judgements = config["experiments"][experiment]["judgements"]
    inputs = {"samples": round_set(experiment, number)}
    if judgements["file"]:
        inputs["judgements"] = complete_people_judgements(experiment, number)
    elif judgements["simulate"]:
        inputs["judgements"] = (
            f"{RESULTS}/feedback/{experiment}/round{number}/simulated.jsonl"
        )
    else:
        sample_set = f"feedback/{experiment}/round{number}"
        for proxy in round_proxies(experiment):
            inputs[f"score_{proxy}"] = f"{RESULTS}/scores/{sample_set}/{proxy}.csv"
    return inputs | round_start(wildcards)


def feedback_arguments(wildcards, input):
    """`d3po train` arguments of a round: the set, its judgements or scores, the start."""
    arguments = ["--samples", input.samples]
    if "judgements" in input.keys():
        arguments += ["--judgements", input.judgements]
    else:
        proxies = round_proxies(wildcards.experiment)
        arguments.append("--scores")
        arguments.extend(f"{proxy}={input[f'score_{proxy}']}" for proxy in proxies)
    return arguments + round_start_argument("--init-adapter")(wildcards, input)


# ------------------------------------------------------------------------- wildcards


def alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    experiment=alternatives(config["experiments"]),
    method=alternatives(
        METHOD_CLASSES
        or {
            m
            for experiment in config["experiments"].values()
            for m in experiment["methods"]
        }
    ),
    seed=r"\d+",
    epoch=r"[1-9]\d*",
    round=r"[1-9]\d*",
    # `d3po score` scores the registered proxies; rule-based ones come from the users' rules.
    proxy=alternatives(REGISTERED_PROXIES or config["evaluation"]["proxies"]),
    # the base model, a checkpoint, or a feedback round's set to judge
    sample_set=r"base|[^/]+/[^/]+/seed\d+/epoch\d+|feedback/[^/]+/round\d+",
