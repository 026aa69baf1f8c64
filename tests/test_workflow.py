"""The Snakemake workflow: formatting, lint, dry-runs of every config, the SLURM profile, and
bad configs that must fail before any job runs, naming the field.

Each test runs Snakemake in a copy of the workflow (Snakefile, workflow/, config/, profiles/)
under tmp_path, so nothing is written into the checkout.
"""

from __future__ import annotations

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


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Snakemake of this venv in ``workdir``; rules find `d3po` on the PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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
    return sum(
        len(experiment.get("methods", ["d3po", "ddpo"])) * len(experiment.get("seeds", [0]))
        for experiment in config["experiments"].values()
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


@pytest.mark.parametrize("config_file", CONFIGS, ids=[path.name for path in CONFIGS])
def test_dry_run_of_every_config(workdir: Path, config_file: Path):
    config = yaml.safe_load(config_file.read_text())
    result = snakemake(
        workdir,
        "--dry-run",
        "--cores",
        "1",
        "--configfile",
        f"config/{config_file.name}",
        "--replace-workflow-config",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    counts = job_counts(output)
    judged = [e for e in config["experiments"].values() if e.get("judgements")]
    simulated = [e for e in judged if e["judgements"].get("simulate")]
    expected = EXPECTED_RULES | ({"sample_for_judging"} if judged else set())
    expected |= {f"sample_checkpoints_{name}" for name in config["experiments"]}
    assert set(counts) == expected | ({"simulate_judgements"} if simulated else set()), counts
    assert counts.get("sample_for_judging", 0) == len(judged)
    assert counts["train"] == expected_train_jobs(config)
    for name, settings in config["experiments"].items():  # one sampling job per training run
        runs = len(settings.get("methods", ["d3po", "ddpo"])) * len(settings.get("seeds", [0]))
        assert counts[f"sample_checkpoints_{name}"] == runs
    assert counts["sample_baseline"] == 1
    assert not (workdir / "results").exists()


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
    """All checkpoints of a run in one GPU job; score jobs in bundles of 32 (group `score`)."""
    counts = job_counts(paper_under_profile)
    bundles = paper_under_profile.count("Group job score")
    assert counts["score_samples"] == 651 and bundles == -(-651 // 32), bundles
    planned = planned_jobs(paper_under_profile)
    gpu_jobs = [r for _, r in planned if int(r.get("gpu", 0))]
    gpu_hours = sum(int(r["runtime"]) for r in gpu_jobs) / 60
    cluster_jobs = len([1 for rule, _ in planned if kind_of(rule)]) - 651 + bundles
    print(
        f"paper.yaml: {cluster_jobs} cluster jobs ({len(gpu_jobs)} on GPUs), {gpu_hours:.1f} GPU h"
    )
    assert len(gpu_jobs) == 18 + 18 + 1  # training runs, their sampling jobs, the base model
    assert gpu_hours < 200, gpu_hours


def test_gpu_smoke_asks_for_a_gpu_with_the_default_config(workdir: Path):
    result = snakemake(workdir, "gpu_smoke", "--profile", "profiles/slurm", "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [(rule, resources)] = planned_jobs(output)
    assert rule == "gpu_smoke" and resources["gpu"] == "1", resources


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


def test_a_run_without_d3po_on_the_path_stops_before_any_job(workdir: Path):
    """Jobs run `d3po`; without it on the PATH every job would fail, said only in its log."""
    python_only = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1"],
        cwd=workdir,
        env=os.environ | python_only,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "d3po" in output and "PATH" in output, output
    assert "Job stats" not in output, output


def test_a_dry_run_needs_no_torch(workdir: Path, tmp_path: Path):
    """The workflow plans without the package's heavy imports (a login node without torch)."""
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


def judgements_file_missing(config):
    config["experiments"]["safety_judged"]["judgements"] = {
        "prompts": "shapes",
        "file": "labels/round1.jsonl",
    }


def prompt_outside_the_toy_world(config):
    config["prompts"]["shapes"].append("a magenta circle")


BAD_CONFIGS = {
    unknown_proxy: [
        "experiments.compressibility.objectives",
        "jpeg_sharpness",
        "jpeg_compressibility",
    ],
    unknown_evaluation_proxy: ["evaluation.proxies", "jpeg_sharpness"],
    unknown_method: ["methods", "ppo"],
    empty_prompt_list: ["shapes", "non-empty"],
    unknown_prompt_list: ["experiments.compressibility.prompts", "animals", "shapes"],
    missing_model_folder: ["model.source", "./models/not-downloaded"],
    prompt_outside_the_toy_world: ["prompts.shapes", "magenta", "known colours"],
    judged_ddpo: ["experiments.safety_judged.methods", "D3PO only"],
    judgements_file_missing: ["judgements.file", "labels/round1.jsonl", "feedback/safety_judged"],
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
    assert sorted((workdir / "results").rglob("*")) == before
    for path, text in earlier.items():
        assert (workdir / path).read_text() == text
