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
    "sample_checkpoint",
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
    assert set(counts) == expected | ({"simulate_judgements"} if simulated else set()), counts
    assert counts.get("sample_for_judging", 0) == len(judged)
    assert counts["train"] == expected_train_jobs(config)
    assert counts["sample_baseline"] == 1
    assert not (workdir / "results").exists()


def test_slurm_profile_dry_run_schedules_training(workdir: Path):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    result = snakemake(
        workdir, "--profile", "profiles/slurm", "--dry-run", "--configfile", "config/paper.yaml"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert job_counts(output)["train"] == expected_train_jobs(config)
    assert "slurm_partition=gpu" in output


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
    judged_ddpo: ["experiments.safety_judged.methods", "ddpo does not train on human judgements"],
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
