"""The whole workflow on tests/config/tiny.yaml (tiny random model, 4 steps, 2 prompts, 2 epochs,
both methods, one seed), run by Snakemake in a copy of the workflow under a temporary folder;
then every declared output is checked to exist and to be well formed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_runs import copy_workflow, run_workflow, workflow_env

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config" / "tiny.yaml"
METHODS = ("d3po", "ddpo", "dpok")
JUDGED_METHODS = ("d3po", "preferred_image", "reward_weighted")
EPOCHS = (1, 2)
PROXIES = ("jpeg_compressibility", "jpeg_incompressibility")
EVALUATION_COLUMNS = [
    "experiment",
    "method",
    "seed",
    "epoch",
    "samples_seen",
    "proxy",
    "mean",
    "std",
    "n",
    "ci_low",
    "ci_high",
    "round",
    "delta",
    "delta_se",
    "p_value",
    "test",
    "blank",
]


# The judged experiment's set: 2 prompts x 2 images, ids GROUP_IMAGE; two annotators agree on
# the first prompt, and split on the second (a tie of votes: no pair).
JUDGEMENTS = "".join(
    f'{{"prompt": "{prompt}", "a": "{a}", "b": "{b}", "winner": "{winner}", '
    f'"annotator": "{annotator}", "time": "2026-11-28T12:00:00"}}\n'
    for prompt, a, b, winner, annotator in [
        ("a red circle", "0000_00", "0000_01", "b", "ann"),
        ("a red circle", "0000_00", "0000_01", "b", "bob"),
        ("a blue square", "0001_00", "0001_01", "a", "ann"),
        ("a blue square", "0001_00", "0001_01", "b", "bob"),
    ]
)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Run the workflow once for all the tests of this module; return its results folder.

    The results folder and the judgements file have spaces in their names: every path in a
    job's command line is quoted."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = yaml.safe_load(TINY.read_text()) | {"results_dir": "my results"}
    config["experiments"]["judged"]["judgements"]["file"] = "my labels.jsonl"
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    (workdir / "my labels.jsonl").write_text(JUDGEMENTS)
    command = run_workflow(workdir, "tiny.yaml", timeout=1800)
    summary = subprocess.run(
        [*command, "--summary"], cwd=workdir, env=workflow_env(), capture_output=True, text=True
    )
    assert summary.returncode == 0, summary.stderr
    assert "missing" not in summary.stdout, summary.stdout
    return workdir / "my results"


def sample_dirs(results: Path) -> list[Path]:
    checkpoints = [
        results / f"samples/compressibility/{method}/seed0/epoch{epoch}"
        for method in METHODS
        for epoch in EPOCHS
    ]
    return [results / "samples/base", *checkpoints]


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        assert image.width > 0 and image.height > 0


pytestmark = pytest.mark.slow


def test_samples_have_a_manifest_and_images(results: Path):
    config = yaml.safe_load(TINY.read_text())
    expected = len(config["prompts"]["shapes"]) * config["evaluation"]["images_per_prompt"]
    for folder in sample_dirs(results):
        manifest = pd.read_csv(folder / "manifest.csv")
        assert list(manifest.columns) == ["id", "prompt", "group", "seed", "path"], folder
        assert len(manifest) == expected, folder
        assert manifest["id"].is_unique
        for path in manifest["path"]:
            check_png(folder / path)


def test_every_sample_set_is_scored_by_every_proxy(results: Path):
    for folder in sample_dirs(results):
        ids = set(pd.read_csv(folder / "manifest.csv")["id"])
        sample_set = folder.relative_to(results / "samples")
        for proxy in PROXIES:
            scores = pd.read_csv(results / "scores" / sample_set / f"{proxy}.csv")
            assert list(scores.columns) == ["id", "proxy", "value"]
            assert set(scores["id"]) == ids
            assert (scores["proxy"] == proxy).all()
            assert scores["value"].notna().all()


def test_training_writes_metrics_and_checkpoints(results: Path):
    for method in METHODS:
        run = results / f"train/compressibility/{method}/seed0"
        metrics = pd.read_csv(run / "metrics.csv")
        assert len(metrics) == len(EPOCHS)
        assert {"epoch", "samples_seen", "reward_mean", "loss"} <= set(metrics.columns)
        assert list(metrics["epoch"]) == list(EPOCHS)
        for epoch in EPOCHS:
            weights = run / f"checkpoints/epoch_{epoch:04d}/pytorch_lora_weights.safetensors"
            assert weights.stat().st_size > 0
        # a finished run is its outputs: no resume state is left to block a later rerun
        assert not (results / f"state/compressibility/{method}/seed0").exists()


def test_evaluation_table_covers_base_and_every_checkpoint(results: Path):
    evaluation = pd.read_csv(results / "compressibility/evaluation.csv")
    assert list(evaluation.columns) == EVALUATION_COLUMNS
    runs = {("base", 0)} | {(method, epoch) for method in METHODS for epoch in EPOCHS}
    assert set(zip(evaluation["method"], evaluation["epoch"], strict=True)) == runs
    assert len(evaluation) == len(runs) * len(PROXIES)
    assert (evaluation["n"] > 0).all()
    # samples_seen = epoch * prompts_per_epoch * images_per_prompt = epoch * 2 * 2
    assert (evaluation["samples_seen"] == evaluation["epoch"] * 4).all()
    # every checkpoint is sampled on the base model's noise: each is compared pair by pair
    checkpoints = evaluation[evaluation["method"] != "base"]
    assert checkpoints["test"].eq("paired-t").all() and checkpoints["delta_se"].notna().all()
    assert evaluation["blank"].notna().all()  # both JPEG proxies declare a blank floor


def test_plots_and_results_table(results: Path):
    check_png(results / "compressibility/curves.png")
    check_png(results / "compressibility/samples.png")
    table = pd.read_csv(results / "results_table.csv")
    assert len(table) > 0
    assert "compressibility" in table.to_string()
    assert "|" in (results / "results_table.md").read_text()


def test_logs_and_benchmarks_are_written(results: Path):
    assert (results / "logs/sample_baseline.log").exists()
    assert (results / "benchmarks/sample_baseline.tsv").exists()
    for method in METHODS:
        assert (results / f"logs/train/compressibility/{method}/seed0.log").exists()


def test_the_judged_round_trains_on_the_judgements(results: Path):
    judged_set = results / "samples/feedback/judged/round1"
    manifest = pd.read_csv(judged_set / "manifest.csv", dtype={"id": str})
    assert list(manifest["id"]) == ["0000_00", "0000_01", "0001_00", "0001_01"]
    assert (judged_set / "trajectories.pt").stat().st_size > 0
    for method in JUDGED_METHODS:  # one decided pair (the split vote is no pair): its winner
        metrics = pd.read_csv(results / f"train/judged/{method}/seed0/round1/metrics.csv")
        assert list(metrics["epoch"]) == list(EPOCHS)
        assert (metrics["units"] == 1).all()
    evaluation = pd.read_csv(results / "judged/evaluation.csv")
    assert set(evaluation["method"]) == {"base", *JUDGED_METHODS}


def test_the_report_shows_the_results_table_and_what_the_run_was(results: Path):
    workdir = results.parent
    command = [sys.executable, "-m", "snakemake", "--configfile", "tiny.yaml"]
    report = subprocess.run(
        [*command, "--replace-workflow-config", "--report", str(results / "report.html")],
        cwd=workdir,
        env=workflow_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr
    page = (results / "report.html").read_text()
    assert "Fine-tuning of" in page and "tiny-random" in page
    assert "results_table.html" in page  # shown inline, not only as a CSV to download
    table = (results / "results_table.html").read_text()
    assert "<table" in table and "compressibility" in table
