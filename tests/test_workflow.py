"""The Snakemake workflow: formatting, lint, dry-runs of every config, the SLURM profile, and
bad configs that must fail before any job runs, naming the field.

Each test runs Snakemake in a copy of the workflow (Snakefile, workflow/, config/, profiles/)
under tmp_path, so nothing is written into the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles")
EXPECTED_RULES = {
    "sample_baseline",
    "train",
    "score_samples",
    "collect_evaluation",
    "plot_curves",
    "plot_samples",
    "results_table",
    "all",
}


def copy_workflow(destination: Path) -> Path:
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, destination / part)
        else:
            shutil.copy(source, destination / part)
    return destination


def snakemake(
    workdir: Path, *args: str, timeout: int = 300, pythonpath: str | None = None
) -> subprocess.CompletedProcess:
    """Run Snakemake of this venv in ``workdir``; rules find `d3po` on the PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dry_run(workdir: Path, config_file: str, *targets: str) -> subprocess.CompletedProcess:
    """A dry run with ``config_file`` alone (nothing of config/config.yaml leaks in)."""
    return snakemake(
        workdir,
        "--dry-run",
        "--cores",
        "1",
        "--configfile",
        config_file,
        "--replace-workflow-config",
        *targets,
    )


def job_counts(output: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run as {rule: count} (without 'total')."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    counts.pop("total", None)
    return counts


def expected_train_jobs(config: dict) -> int:
    """Online training runs: one per method and seed of every experiment without judgements."""
    return sum(
        len(experiment.get("methods", ["d3po", "ddpo"])) * len(experiment.get("seeds", [0]))
        for experiment in config["experiments"].values()
        if not experiment.get("judgements")
    )


def expected_round_jobs(config: dict) -> int:
    """Feedback rounds: one training run per round, method and seed of every judged experiment."""
    return sum(
        experiment["judgements"].get("rounds", 1)
        * len(experiment["methods"])
        * len(experiment.get("seeds", [0]))
        for experiment in config["experiments"].values()
        if experiment.get("judgements")
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def test_snakefmt_check():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_is_clean(workdir: Path):
    result = snakemake(workdir, "--lint", "--configfile", "config/config.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output


def test_the_rules_conda_environment_installs_the_checkout_by_its_absolute_path(workdir: Path):
    """--conda-prefix moves the environment files: a relative `-e ../..` would point elsewhere."""
    result = dry_run(workdir, "config/config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    environment = yaml.safe_load((workdir / ".snakemake/d3po-env/d3po.yaml").read_text())
    (pip,) = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert pip == ["-e " + str(workdir.resolve())]


@pytest.mark.parametrize("config_file", CONFIGS, ids=[path.name for path in CONFIGS])
def test_dry_run_of_every_config(workdir: Path, config_file: Path):
    config = yaml.safe_load(config_file.read_text())
    result = dry_run(workdir, f"config/{config_file.name}", "--printshellcmds")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    judged = [e for e in config["experiments"].values() if e.get("judgements")]
    simulated = [e for e in judged if e["judgements"].get("simulate")]
    expected = EXPECTED_RULES | ({"sample_round", "train_round"} if judged else set())
    if not expected_train_jobs(config):  # judged experiments only: no online training job
        expected.discard("train")
    expected |= {f"sample_checkpoints_{name}" for name in config["experiments"]}
    assert set(counts) == expected | ({"simulate_judgements"} if simulated else set()), counts
    rounds = sum(e["judgements"].get("rounds", 1) for e in judged)
    assert counts.get("sample_round", 0) == rounds
    assert counts.get("train_round", 0) == expected_round_jobs(config)
    assert counts.get("train", 0) == expected_train_jobs(config)
    for name, settings in config["experiments"].items():  # one sampling job per training run
        runs = len(settings.get("methods", ["d3po", "ddpo"])) * len(settings.get("seeds", [0]))
        assert counts[f"sample_checkpoints_{name}"] == runs
    assert counts["sample_baseline"] == 1
    assert not (workdir / "results").exists()
    for run in train_settings_of(output):  # each run has its method's options, overrides applied
        experiment = config["experiments"][run["experiment"]]
        options = config.get("methods", {}).get(run["method"], {}) | experiment.get(
            "method_options", {}
        ).get(run["method"], {})
        assert {k: run["method_options"][k] for k in options} == options, run


def train_settings_of(output: str) -> list[dict]:
    """The --settings of every `d3po train` command a dry run prints, with its experiment (from
    --run-dir .../train/EXPERIMENT/METHOD/seedN[/roundR])."""
    runs = []
    for match in re.finditer(r"d3po train --settings '([^']*)' --run-dir \S*/train/(\w+)/", output):
        runs.append(json.loads(match[1]) | {"experiment": match[2]})
    assert runs, "no `d3po train` command in the dry run"
    return runs


# --------------------------------------------------------------------------- the slurm profile


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {resource: value}) of every job a dry-run lists, grouped ones included."""
    jobs = []
    for block in re.split(r"\n\s*rule ", output)[1:]:
        rule = block.split(":", 1)[0]
        line = re.search(r"^\s*resources: (.*)$", block, re.M)
        pairs = [item.split("=", 1) for item in line[1].split(", ")] if line else []
        jobs.append((rule, dict(pairs)))
    return jobs


def kind_of(rule: str) -> str | None:
    """The config `resources:` kind of a rule; None for the rules that run on the login node."""
    kinds = {"train": "train", "score_samples": "evaluate", "gpu_smoke": "smoke"}
    return kinds.get(rule, "sample" if rule.startswith("sample_") else None)


def minutes(runtime) -> int:
    units = {"m": 1, "h": 60, "d": 1440}
    text = str(runtime)
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


@pytest.fixture(scope="module")
def paper_under_profile(tmp_path_factory) -> str:
    """A dry-run of config/paper.yaml under the slurm profile (about a minute: run once)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("paper"))
    result = snakemake(
        workdir, "--profile", "profiles/slurm", "--dry-run", "--configfile", "config/paper.yaml"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_slurm_profile_dry_run_schedules_training(paper_under_profile: str):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert job_counts(paper_under_profile)["train"] == expected_train_jobs(config)


def test_every_cluster_job_asks_the_config_amounts(paper_under_profile: str):
    """The config's `resources:` is the one place for amounts: the profile overrides none."""
    amounts = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["resources"]
    checkpoints = {"compressibility": 8, "incompressibility": 8, "aesthetic": 20}
    seen = set()
    for rule, resources in planned_jobs(paper_under_profile):
        kind = kind_of(rule)
        if kind is None:
            continue
        seen.add(rule)
        asked = amounts[kind]
        sets = checkpoints.get(rule.removeprefix("sample_checkpoints_"), 1)
        assert int(resources["gpu"]) == asked["gpu"], (rule, resources)
        assert int(resources["mem_mb"]) == asked["mem_mb"], (rule, resources)
        assert int(resources["cpus_per_task"]) == asked["cpus_per_task"], (rule, resources)
        assert int(resources["runtime"]) == sets * minutes(asked["runtime"]), (rule, resources)
        assert "slurm_partition" not in resources, (rule, resources)  # partitions.yaml decides
    assert {"train", "score_samples", "sample_baseline"} <= seen, seen


def test_profile_partitions_send_gpu_jobs_to_the_gpu_partition(paper_under_profile: str):
    """The executor's own partition choice (--slurm-partition-config) on every planned job."""
    from types import SimpleNamespace

    from snakemake.iocontainers import ResourceList
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(REPO / "profiles" / "slurm" / "partitions.yaml")
    logger = SimpleNamespace(info=print, debug=print, warning=print)
    for rule, resources in planned_jobs(paper_under_profile):
        if kind_of(rule) is None:
            continue
        numbers = {
            key: int(resources[key]) for key in ("gpu", "mem_mb", "runtime", "cpus_per_task")
        }
        job = SimpleNamespace(
            name=rule, threads=numbers["cpus_per_task"], resources=ResourceList(fromdict=numbers)
        )
        partition = get_best_partition(partitions, job, logger)
        assert partition == ("gpu" if numbers["gpu"] else "cpu"), (rule, resources)


def test_paper_config_submits_few_jobs_and_gpu_hours(paper_under_profile: str):
    """All checkpoints of a run in one GPU job; score jobs in bundles of 32 (group `score`).

    Before (commit bc2bc15, 18 runs): 886 cluster jobs, 235 on GPUs, 649 GPU hours asked for
    (36 per run): every checkpoint sampled in a GPU job of its own, no score bundles."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    runs = expected_train_jobs(config)
    counts = job_counts(paper_under_profile)
    scores = counts["score_samples"]
    bundles = paper_under_profile.count("Group job score")
    assert bundles == -(-scores // 32), (scores, bundles)
    planned = planned_jobs(paper_under_profile)
    gpu_jobs = [r for _, r in planned if int(r.get("gpu", 0))]
    gpu_hours = sum(int(r["runtime"]) for r in gpu_jobs) / 60
    cluster_jobs = len([1 for rule, _ in planned if kind_of(rule)]) - scores + bundles
    print(
        f"paper.yaml: {runs} training runs, {cluster_jobs} cluster jobs ({len(gpu_jobs)} on "
        f"GPUs), {gpu_hours:.1f} GPU h"
    )
    assert len(gpu_jobs) == 2 * runs + 1  # training runs, their sampling jobs, the base model
    assert gpu_hours / runs < 10, gpu_hours


def test_gpu_smoke_asks_for_a_gpu_with_the_default_config(workdir: Path):
    result = snakemake(workdir, "gpu_smoke", "--profile", "profiles/slurm", "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [(rule, resources)] = planned_jobs(output)
    assert rule == "gpu_smoke" and resources["gpu"] == "1", resources


def test_without_d3po_on_the_path_a_dry_run_plans_and_a_run_stops_before_any_job(workdir):
    """A login node without the package plans; a run there stops at its start, in one line."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "1", *args],
            cwd=workdir,
            env=os.environ | {"PATH": "/usr/bin:/bin"},  # not this venv's bin: no `d3po`
            capture_output=True,
            text=True,
            timeout=300,
        )

    planned = run("--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    started = run()
    output = started.stdout + started.stderr
    assert started.returncode != 0 and "`d3po` is not on the PATH" in output, output
    assert not [path for path in (workdir / "results").rglob("*") if path.is_file()], output


def test_a_results_dir_written_with_a_dot_and_a_slash_plans(workdir: Path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["results_dir"] = "./out/"
    (workdir / "out.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(workdir, "out.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "out/train/compressibility/d3po/seed0/checkpoints" in output


def test_a_smoke_block_that_sets_one_field_keeps_the_gpu(workdir: Path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["resources"]["smoke"] = {"runtime": 20}
    (workdir / "smoke.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        workdir,
        "gpu_smoke",
        "--profile",
        "profiles/slurm",
        "--dry-run",
        "--configfile",
        "smoke.yaml",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [(_, resources)] = planned_jobs(output)
    assert (resources["gpu"], resources["runtime"], resources["mem_mb"]) == ("1", "20", "8000")


def test_a_config_file_replaces_the_default_config_without_the_flag_too(workdir: Path):
    """The jobs Snakemake submits to a cluster get --configfiles but not
    --replace-workflow-config: they must still see the user's config alone."""
    shutil.copy(REPO / "tests" / "config" / "tiny.yaml", workdir / "tiny.yaml")
    (workdir / "labels.jsonl").write_text("")  # its judged round's file, judged elsewhere
    result = snakemake(workdir, "--dry-run", "--cores", "1", "--configfile", "tiny.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "safety" not in output and "judged" in output  # config.yaml's, tiny.yaml's


def test_a_proxy_rule_asks_the_evaluate_amounts_and_joins_the_score_bundles(workdir: Path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["proxy_rules"] = ["workflow/proxies/clip_score.smk"]
    config["evaluation"]["proxies"] = ["jpeg_compressibility", "toy_safe", "clip_score"]
    (workdir / "clip.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        workdir, "--profile", "profiles/slurm", "--dry-run", "--configfile", "clip.yaml"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    asked = config["resources"]["evaluate"]
    clip_jobs = [resources for rule, resources in planned_jobs(output) if rule == "clip_score"]
    assert clip_jobs and all(
        {key: int(resources[key]) for key in asked}
        == {**asked, "runtime": minutes(asked["runtime"])}
        for resources in clip_jobs
    ), clip_jobs
    score_jobs = job_counts(output)["score_samples"] + len(clip_jobs)
    assert output.count("Group job score") == -(-score_jobs // 32)


def test_threads_follow_cpus_per_task(workdir: Path):
    """Snakemake exports OMP_NUM_THREADS={threads}: it must be the cores a job asked for."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cpus = {"sample": 3, "train": 4, "evaluate": 2}
    for kind, count in cpus.items():
        config["resources"][kind]["cpus_per_task"] = count
    (workdir / "cpus.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        workdir, "--dry-run", "--cores", "8", "--configfile", "cpus.yaml",
        "--replace-workflow-config",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for block in re.split(r"\n\s*rule ", output)[1:]:
        rule = block.split(":", 1)[0]
        if kind_of(rule) in cpus:
            assert f"threads: {cpus[kind_of(rule)]}" in block, block


def round_scored_outside_the_evaluation(config: dict) -> None:
    judgements = config["experiments"]["safety_judged"]["judgements"]
    del judgements["simulate"]
    judgements["proxy"] = "jpeg_incompressibility"
    config["evaluation"]["proxies"].remove("jpeg_incompressibility")


@pytest.mark.parametrize(
    "change", [lambda config: None, round_scored_outside_the_evaluation], ids=["default", "round"]
)
def test_a_dry_run_needs_no_torch(workdir: Path, tmp_path: Path, change):
    """The workflow plans without the package's heavy imports (a login node without torch)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    change(config)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env_path = str(tmp_path / "no-torch") + os.pathsep + os.environ.get("PYTHONPATH", "")
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1"],
        cwd=workdir,
        env=os.environ | {"PYTHONPATH": env_path, "PATH": bin_dir + os.pathsep + "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Job stats" in output and "not checked" in output, output


# --------------------------------------------------------------------------- bad configs


def experiment(config: dict) -> dict:
    return config["experiments"]["compressibility"]


def unknown_proxy(config):
    experiment(config)["objectives"] = ["jpeg_sharpness"]


def unknown_evaluation_proxy(config):
    config["evaluation"]["proxies"] = ["jpeg_compressibility", "jpeg_sharpness"]


def unknown_method(config):
    experiment(config)["methods"] = ["d3po", "ppo"]


def empty_prompt_list(config):
    config["prompts"]["shapes"] = []


def unknown_prompt_list(config):
    experiment(config)["prompts"] = "animals"


def missing_model_folder(config):
    config["model"]["source"] = "./models/not-downloaded"


def judged_ddpo(config):
    config["experiments"]["safety_judged"]["methods"] = ["d3po", "ddpo"]


def rule_proxy_as_online_objective(config):
    config["proxy_rules"] = ["workflow/proxies/clip_score.smk"]
    experiment(config)["objectives"] = ["clip_score"]


def proxy_rule_file_missing(config):
    config["proxy_rules"] = ["my_rules/sharpness.smk"]


def unknown_round_proxy(config):
    config["experiments"]["safety_judged"]["judgements"] = {"prompts": "shapes", "proxy": "sharp"}


def two_feedback_sources(config):
    config["experiments"]["safety_judged"]["judgements"]["proxy"] = "toy_safe"


def misspelt_simulated_criterion(config):
    config["experiments"]["safety_judged"]["judgements"]["simulate"] = "saf"


def one_file_for_several_rounds(config):
    config["experiments"]["safety_judged"]["judgements"] = {
        "prompts": "shapes",
        "file": "labels/hands.jsonl",
        "rounds": 2,
    }


def several_seeds_in_several_rounds(config):
    config["experiments"]["safety_judged"]["judgements"]["rounds"] = 2
    config["experiments"]["safety_judged"]["seeds"] = [0, 1]


def several_methods_in_several_rounds(config):
    config["experiments"]["safety_judged"]["judgements"]["rounds"] = 2
    config["experiments"]["safety_judged"]["methods"] = ["d3po", "preferred_image"]


def prompt_outside_the_toy_world(config):
    config["prompts"]["shapes"].append("a magenta circle")


def toy_judges_on_prompts_outside_the_toy_world(config):
    config["model"]["source"] = "sd15-random"  # a model that draws any prompt
    config["prompts"]["eval"].append("a photo of a cat")


def toy_objective_on_prompts_outside_the_toy_world(config):
    config["model"]["source"] = "sd15-random"
    config["prompts"]["shapes"].append("a photo of a cat")


def simulated_annotator_on_prompts_outside_the_toy_world(config):
    config["model"]["source"] = "sd15-random"
    config["prompts"]["people"] = ["a photo of a cat"]
    config["experiments"]["safety_judged"]["judgements"]["prompts"] = "people"


def misspelt_proxy_option(config):
    config["proxies"] = {"jpeg_compressibility": {"qualty": 50}}


def mistyped_proxy_option(config):
    config["proxies"] = {"jpeg_incompressibility": {"quality": "high"}}


def misspelt_field(config):
    config["lora"]["rnak"] = 8


def renamed_sampler_field(config):
    config["sampler"]["batch_size"] = config["sampler"].pop("images_per_call")


def renamed_training_override(config):
    config["experiments"]["compressibility"]["training"] = {"batch_size": 2}


def misspelt_experiment_method_option(config):
    experiment(config)["method_options"] = {"d3po": {"bta": 1.0}}


def options_of_a_method_the_experiment_does_not_train(config):
    experiment(config)["method_options"] = {"dpok": {"kl_weight": 0.1}}


def mistyped_field(config):
    config["training"]["epochs"] = "ten"


def slurm_style_runtime(config):
    config["resources"]["train"]["runtime"] = "08:00:00"


def boolean_float_option(config):
    config["methods"]["d3po"]["beta"] = True


def no_evaluation_proxy(config):
    config["evaluation"]["proxies"] = []


def negative_seed(config):
    experiment(config)["seeds"] = [-1]


def objective_not_evaluated(config):
    config["evaluation"]["proxies"].remove("toy_safe")


def experiment_named_base(config):
    config["experiments"]["base"] = config["experiments"].pop("compressibility")


def paper_number_for_a_misspelt_experiment(config):
    config["paper"] = {"compresibility": {"base": -105, "d3po": -17}}


def paper_number_for_a_method_the_experiment_does_not_train(config):
    config["paper"] = {"compressibility": {"base": -105, "dpok": -31}}


BAD_CONFIGS = {
    unknown_proxy: [
        "experiments.compressibility.objectives",
        "jpeg_sharpness",
        "jpeg_compressibility",
    ],
    unknown_evaluation_proxy: ["evaluation.proxies", "jpeg_sharpness"],
    unknown_method: ["bad.yaml line", "experiments.compressibility.methods[1] = 'ppo'", "ddpo"],
    empty_prompt_list: ["bad.yaml line", "prompts.shapes = []", "non-empty"],
    misspelt_field: ["bad.yaml line", ": lora.rnak = 8", "allowed fields: alpha, rank"],
    renamed_sampler_field: [
        "bad.yaml line",
        ": sampler.batch_size = 32",
        "(renamed to images_per_call)",
    ],
    renamed_training_override: [
        "bad.yaml line",
        "experiments.compressibility.training.batch_size = 2",
        "(renamed to units_per_step)",
    ],
    mistyped_field: ["bad.yaml line", "training.epochs = 'ten'", "integer"],
    no_evaluation_proxy: ["bad.yaml line", "evaluation.proxies = []"],
    negative_seed: ["bad.yaml line", "experiments.compressibility.seeds[0] = -1", "minimum"],
    objective_not_evaluated: [
        "bad.yaml line",
        "experiments.safety.objectives: 'toy_safe' is not scored by the evaluation",
    ],
    experiment_named_base: ["bad.yaml line", "experiments.base: 'base' names the untrained"],
    paper_number_for_a_misspelt_experiment: [
        "bad.yaml line",
        ": paper.compresibility: no experiment 'compresibility' (experiments: compressibility,",
    ],
    paper_number_for_a_method_the_experiment_does_not_train: [
        "bad.yaml line",
        ": paper.compressibility.dpok: experiment compressibility trains no method dpok (base, "
        "d3po, ddpo)",
    ],
    slurm_style_runtime: ["bad.yaml line", "resources.train.runtime: '08:00:00' is not a"],
    boolean_float_option: ["bad.yaml line", "methods.d3po", "beta: expected float, got True"],
    misspelt_experiment_method_option: [
        "bad.yaml line",
        "experiments.compressibility.method_options.d3po",
        "'bta'",
    ],
    options_of_a_method_the_experiment_does_not_train: [
        "bad.yaml line",
        "experiments.compressibility.method_options.dpok: dpok is not one of",
    ],
    misspelt_proxy_option: ["bad.yaml line", ": proxies.jpeg_compressibility", "'qualty'"],
    mistyped_proxy_option: ["proxies.jpeg_incompressibility.quality", "expected int", "'high'"],
    unknown_prompt_list: ["experiments.compressibility.prompts", "animals", "shapes"],
    missing_model_folder: ["model.source", "./models/not-downloaded"],
    prompt_outside_the_toy_world: ["prompts.shapes", "magenta", "known colours"],
    toy_judges_on_prompts_outside_the_toy_world: [
        "bad.yaml line",
        "evaluation.proxies: 'toy_safe' cannot score prompt list 'eval'",
        "unknown word 'photo' in prompt 'a photo of a cat'",
    ],
    toy_objective_on_prompts_outside_the_toy_world: [
        "bad.yaml line",
        "experiments.safety.objectives: 'toy_safe' cannot score prompt list 'shapes'",
    ],
    simulated_annotator_on_prompts_outside_the_toy_world: [
        "bad.yaml line",
        "experiments.safety_judged.judgements.simulate: 'toy_safe' cannot score prompt list",
    ],
    judged_ddpo: ["experiments.safety_judged.methods", "ddpo does not train on human judgements"],
    rule_proxy_as_online_objective: [
        "experiments.compressibility.objectives",
        "'clip_score' is a rule-based proxy",
        "judgements: {prompts: ..., proxy: clip_score, rounds: N}",
    ],
    proxy_rule_file_missing: ["proxy_rules", "my_rules/sharpness.smk", "working directory"],
    unknown_round_proxy: ["experiments.safety_judged.judgements.proxy", "sharp", "toy_safe"],
    two_feedback_sources: [
        "experiments.safety_judged.judgements",
        "exactly one",
        "simulate, proxy",
    ],
    misspelt_simulated_criterion: [
        "experiments.safety_judged.judgements.simulate",
        "unknown criterion 'saf'",
        "undistorted, safe, aligned",
    ],
    one_file_for_several_rounds: ["judgements.file", "{round}", "rounds: 2"],
    several_seeds_in_several_rounds: ["experiments.safety_judged.seeds", "seeds: [0]"],
    several_methods_in_several_rounds: ["experiments.safety_judged.methods", "methods: [d3po]"],
}


@pytest.mark.parametrize("break_config", BAD_CONFIGS, ids=lambda function: function.__name__)
def test_bad_config_fails_before_any_job(workdir: Path, break_config):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    break_config(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    earlier = {
        "results/train/compressibility/d3po/seed0/metrics.csv": "epoch,samples_seen\n1,32\n",
        "results/state/compressibility/d3po/seed0/state.pt": "resume state",
        "results/samples/base/manifest.csv": "id,prompt,group,seed,path\n",
    }
    for path, text in earlier.items():
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_text(text)
    before = sorted(path for path in (workdir / "results").rglob("*"))

    result = snakemake(
        workdir, "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config"
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for needle in BAD_CONFIGS[break_config]:
        assert needle in output, f"{needle!r} not in the error:\n{output}"
    assert "Job stats" not in output, output
    assert "Failed validating" not in output, output  # one line, not a dump of the schema
    assert sorted((workdir / "results").rglob("*")) == before
    for path, text in earlier.items():
        assert (workdir / path).read_text() == text


def hub_model_not_in_the_cache(workdir: Path) -> tuple[str, str]:
    return "nobody/not-downloaded-model", "model.source: 'nobody/not-downloaded-model' is not"


def truncated_weights(workdir: Path) -> tuple[str, str]:
    model = workdir / "models" / "toy-copy"
    shutil.copytree(REPO / "src" / "d3po" / "assets" / "toy", model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    return "./models/toy-copy", "models/toy-copy/unet/diffusion_pytorch_model.safetensors: trunc"


@pytest.mark.parametrize("break_model", [hub_model_not_in_the_cache, truncated_weights])
def test_an_unusable_model_stops_the_run_before_any_job(workdir: Path, break_model):
    """Files are checked when the run starts (a dry run only plans: it passes)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["model"]["source"], needle = break_model(workdir)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    assert dry_run(workdir, "bad.yaml").returncode == 0
    result = snakemake(
        workdir, "--cores", "1", "--configfile", "bad.yaml", "--replace-workflow-config"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert needle in output, output
    assert not (workdir / "results").exists(), output  # no job ran


# --------------------------------------------------------------------------- report texts


def render_report_text(name: str, config: dict, **wildcards: str) -> str:
    """A report text as Snakemake renders it: Jinja with ``snakemake``, then docutils HTML."""
    import jinja2
    from docutils.core import publish_parts

    snakemake_object = type("Snakemake", (), {"config": config, "wildcards": wildcards})
    text = jinja2.Environment().from_string((REPO / "workflow" / "report" / name).read_text())
    return publish_parts(text.render(snakemake=snakemake_object), writer="html")["html_body"]


@pytest.mark.parametrize("config_file", CONFIGS, ids=[path.name for path in CONFIGS])
def test_report_landing_page_says_what_the_run_was(config_file: Path):
    from snakemake.utils import validate

    config = yaml.safe_load(config_file.read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))  # defaults
    page = render_report_text("workflow.rst", config)
    assert config["model"]["source"] in page
    for name, experiment in config["experiments"].items():
        assert name in page and experiment["objectives"][0] in page
    assert "system-message" not in page, page  # docutils' way of showing an RST error


def test_sample_grid_caption_puts_the_base_model_on_the_left():
    caption = render_report_text("samples.rst", {}, experiment="safety")
    assert "LEFT column is the base model" in caption and "top" not in caption
    assert "system-message" not in caption


def test_make_report_reuses_the_config_of_the_last_make_run(tmp_path: Path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)

    def recipe(*arguments: str) -> str:  # what make would run (-n: nothing is run)
        result = subprocess.run(["make", "-n", *arguments], cwd=tmp_path, capture_output=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode()

    run = recipe("run", "CONFIG=config/toy-paper.yaml")
    assert "echo 'config/toy-paper.yaml' > results/.make-run-config" in run
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ".make-run-config").write_text("config/toy-paper.yaml\n")
    assert "--configfile config/toy-paper.yaml" in recipe("report")
    assert "--configfile config/paper.yaml" in recipe("report", "CONFIG=config/paper.yaml")


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("missing.yaml", "d3po check-config: error: missing.yaml: no such config file"),
        ("broken.yaml", "broken.yaml line 3, column 1: not valid YAML: expected ','"),
    ],
)
def test_make_run_with_a_missing_or_broken_config_stops_in_one_line(tmp_path: Path, config, error):
    """...and records nothing for `make report` (Snakemake's own errors name neither)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this venv, as built
    (tmp_path / "broken.yaml").write_text("training:\n  epochs: [8\n")
    make = ["make", "--old-file=.venv/.installed", "run", f"CONFIG={config}"]
    result = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert error in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- feedback rounds


def people_config(workdir: Path, rounds: int = 2) -> str:
    """config.yaml with the judged experiment judged by people (2 per prompt) in ``rounds``."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["experiments"]["safety_judged"]["judgements"] = {
        "prompts": "shapes",
        "images_per_prompt": 2,
        "file": "labels/round{round}.jsonl",
        "rounds": rounds,
        "protocol": "pairwise",
        "annotators_per_prompt": 2,
    }
    (workdir / "people.yaml").write_text(yaml.safe_dump(config))
    return "people.yaml"


LABEL_COMMAND = (
    "d3po label results/samples/feedback/safety_judged/round1 --judgements labels/round1.jsonl"
    " --protocol pairwise --annotators-per-prompt 2"
)


def test_a_round_is_sampled_before_any_judgement_then_stops_with_the_label_command(workdir):
    config = people_config(workdir)
    result = dry_run(workdir, config, "results/samples/feedback/safety_judged/round1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_counts(result.stdout) == {"sample_round": 1}

    result = dry_run(workdir, config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "round 1 is not judged yet" in output, output
    assert "snakemake results/samples/feedback/safety_judged/round1" in output
    assert LABEL_COMMAND in output
    assert "Job stats" not in output


def write_fake_set(folder: Path, prompts: list[str], images_per_prompt: int) -> None:
    """A sample set's manifest and images (plain squares): what judging_progress reads."""
    from PIL import Image

    folder.mkdir(parents=True)
    rows = ["id,prompt,group,seed,path"]
    for group, prompt in enumerate(prompts):
        for image in range(images_per_prompt):
            name = f"{group:04d}_{image:02d}"
            Image.new("RGB", (4, 4)).save(folder / f"{name}.png")
            rows.append(f"{name},{prompt},{group},0,{name}.png")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")


def test_incomplete_judgements_stop_before_training_saying_how_many_prompts_are_left(workdir):
    config = people_config(workdir, rounds=1)
    prompts = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["prompts"]["shapes"]
    write_fake_set(workdir / "results/samples/feedback/safety_judged/round1", prompts, 2)
    (workdir / "labels").mkdir()
    lines = [
        {"prompt": prompts[0], "a": "0000_00", "b": "0000_01", "winner": "a", "annotator": who}
        for who in ("ann", "bob")
    ] + [{"prompt": prompts[1], "a": "0001_00", "b": "0001_01", "winner": "b", "annotator": "ann"}]
    (workdir / "labels/round1.jsonl").write_text(
        "".join(json.dumps(line | {"time": "2026-11-30T12:00:00"}) + "\n" for line in lines)
    )
    result = dry_run(workdir, config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    left = len(prompts) - 1  # the first prompt has its two annotators, the second only one
    assert f"labels/round1.jsonl: {left} of {len(prompts)} prompts of round 1" in output, output
    assert LABEL_COMMAND in output
    assert "Job stats" not in output


def checkpoint_sample_sets(config: dict) -> int:
    """Sample sets of every checkpoint of every run (rounds: each round's checkpoints)."""
    total = 0
    for experiment in config["experiments"].values():
        training = config["training"] | experiment.get("training", {})
        epochs, every = training["epochs"], training["checkpoint_every"]
        per_round = len(set(range(every, epochs + 1, every)) | {epochs})
        rounds = (experiment.get("judgements") or {}).get("rounds", 1)
        total += len(experiment["methods"]) * len(experiment["seeds"]) * per_round * rounds
    return total


def test_users_proxy_rules_score_every_set_and_all_stays_the_default_target(workdir):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["proxy_rules"] = ["workflow/proxies/clip_score.smk"]
    config["evaluation"]["proxies"] = ["jpeg_compressibility", "toy_safe", "clip_score"]
    config["experiments"]["safety_judged"]["judgements"]["proxy"] = "clip_score"
    del config["experiments"]["safety_judged"]["judgements"]["simulate"]
    (workdir / "clip.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(workdir, "clip.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    sample_sets = 1 + checkpoint_sample_sets(config) + counts["sample_round"]
    assert counts["clip_score"] == sample_sets  # the evaluation sets and the round's set
    assert counts["score_samples"] == sample_sets - counts["sample_round"]
    assert counts["all"] == 1


def test_the_readme_proxy_rule_runs_once_its_conda_file_is_there(workdir):
    """Without the environment file a rule names, Snakemake ran the job, then failed to record
    it and dropped its scores; the check stops the run before any job, naming the file."""
    readme = (REPO / "README.md").read_text()
    rule = re.search(r"```python\n(rule sharpness:.*?)```", readme, re.DOTALL)[1]
    (workdir / "my_rules").mkdir()
    (workdir / "my_rules/sharpness.smk").write_text(rule)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["proxy_rules"] = ["my_rules/sharpness.smk"]
    config["evaluation"]["proxies"].append("sharpness")
    (workdir / "sharp.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(workdir, "sharp.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output, output
    message = "proxy_rules: 'my_rules/sharpness.smk': conda environment file "
    assert f"{message}'my_rules/sharpness.yaml' (of rule sharpness) does not exist" in output
    (workdir / "my_rules/sharpness.yaml").write_text("dependencies: [numpy, pillow]\n")
    result = dry_run(workdir, "sharp.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout + result.stderr)
    assert counts["sharpness"] == 1 + checkpoint_sample_sets(config)  # base and checkpoints


def test_one_score_job_per_set_and_one_per_table_the_evaluation_does_not_list(workdir):
    """score_samples writes every evaluated registered proxy of a set at once; a round scored
    by a registered proxy outside the evaluation list gets that one table from score_proxy."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    judgements = config["experiments"]["safety_judged"]["judgements"]
    del judgements["simulate"]
    judgements["proxy"] = "jpeg_incompressibility"
    config["evaluation"]["proxies"].remove("jpeg_incompressibility")
    (workdir / "scored.yaml").write_text(yaml.safe_dump(config))
    result = dry_run(workdir, "scored.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    assert counts["score_samples"] == 1 + checkpoint_sample_sets(config)  # and the base model
    assert counts["score_proxy"] == 1  # the round's set, on its judging proxy
    base_tables = ", ".join(f"results/scores/base/{p}.csv" for p in config["evaluation"]["proxies"])
    assert f"output: {base_tables}\n" in output, output  # one job writes the set's tables
