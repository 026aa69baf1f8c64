"""Feedback rounds and rule-based proxies, end to end on the toy world, in one Snakemake run.

The test adds a proxy rule of its own in a temporary file (``brightness``: mean pixel value)
and lists it, with the shipped CLIP-score rule on a tiny random open_clip model the test
builds, in the config and nowhere else. Two experiments of two rounds, two epochs per round
(few jobs: the machine's two cores are shared):

- ``scored``: proxy-scored rounds, pairs from the Pareto order of the test's own rule and the
  CLIP-score rule;
- ``safe``: rounds judged by the toy world's simulated annotator (the held-out safe rate per
  round is the human-feedback loop's figure).

Every sample set is scored by the three evaluation proxies, two of them rules.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_runs import copy_workflow, run_workflow, workflow_env

from d3po.scores import read_scores

EPOCHS = 2  # per round

BRIGHTNESS_RULE = """
rule brightness:
    input:
        samples=f"{RESULTS}/samples/{{sample_set}}",
    output:
        f"{RESULTS}/scores/{{sample_set}}/brightness.csv",
    conda:
        "brightness.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "python my_rules/brightness.py {input.samples:q} {output:q}"
"""

BRIGHTNESS_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

samples, out = Path(sys.argv[1]), Path(sys.argv[2])
manifest = pd.read_csv(samples / "manifest.csv", dtype={"id": str})
images = [np.asarray(Image.open(samples / path), dtype=float) for path in manifest["path"]]
values = [image.mean() / 255 for image in images]
table = pd.DataFrame({"id": manifest["id"], "proxy": "brightness", "value": values})
table.to_csv(out, index=False)
"""


def config(clip_dir: Path) -> dict:
    judge = ["a red circle", "a blue square", "a green cross", "a yellow triangle"]
    evaluation = ["a green circle", "a red square", "a blue cross", "a purple triangle"]

    def rounds(source: dict, objective: str) -> dict:
        judgements = {"prompts": "judge", "images_per_prompt": 4, "rounds": 2} | source
        return {
            "objectives": [objective],
            "prompts": "judge",
            "methods": ["d3po"],
            "seeds": [0],
            "judgements": judgements,
        }

    return {
        "model": {"source": "toy"},
        "sampler": {"num_steps": 10, "eta": 1.0, "guidance_scale": 3.0, "images_per_call": 32},
        "training": {
            "epochs": EPOCHS,
            "checkpoint_every": EPOCHS,
            "units_per_step": 4,
            "micro_batch_size": 64,
            "learning_rate": 1.0e-3,
        },
        "prompts": {"judge": judge, "eval": evaluation},
        "evaluation": {
            "prompts": "eval",
            "images_per_prompt": 4,
            "proxies": ["toy_safe", "brightness", "clip_score"],
        },
        "proxy_rules": ["my_rules/brightness.smk", "workflow/proxies/clip_score.smk"],
        "proxies": {"clip_score": {"model": f"local-dir:{clip_dir}", "batch_size": 16}},
        "experiments": {
            "scored": rounds({"proxy": ["brightness", "clip_score"]}, "brightness"),
            "safe": rounds({"simulate": "safe", "protocol": "score"}, "toy_safe"),
        },
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_clip_dir) -> Path:
    """Run the whole workflow once (no target: `all`) for every test of this module."""
    workdir = copy_workflow(tmp_path_factory.mktemp("rounds"))
    (workdir / "my_rules").mkdir()
    (workdir / "my_rules/brightness.smk").write_text(BRIGHTNESS_RULE)
    (workdir / "my_rules/brightness.py").write_text(BRIGHTNESS_SCRIPT)
    (workdir / "my_rules/brightness.yaml").write_text("dependencies: [numpy, pandas, pillow]\n")
    (workdir / "rounds.yaml").write_text(yaml.safe_dump(config(tiny_clip_dir)))
    command = run_workflow(workdir, "rounds.yaml")
    report = subprocess.run(
        [*command, "--report", "report.html"],
        cwd=workdir,
        env=workflow_env(),
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    return workdir


pytestmark = pytest.mark.slow


def evaluation(workdir: Path, experiment: str) -> pd.DataFrame:
    return pd.read_csv(workdir / f"results/{experiment}/evaluation.csv")


def per_round(table: pd.DataFrame, proxy: str) -> dict[int, tuple[float, float, float]]:
    """{round: (mean, ci_low, ci_high)} of ``proxy`` at the last checkpoint of each round."""
    rows = table[table["proxy"] == proxy].sort_values("epoch").groupby("round").tail(1)
    return {
        int(row["round"]): (row["mean"], row["ci_low"], row["ci_high"])
        for _, row in rows.iterrows()
    }


def test_a_users_proxy_rule_scores_tables_and_plots_every_checkpoint(workdir: Path):
    """(a) brightness is named in evaluation.proxies and proxy_rules, nowhere else."""
    results = workdir / "results"
    for experiment in ("scored", "safe"):
        table = evaluation(workdir, experiment)
        for proxy in ("toy_safe", "brightness", "clip_score"):
            rows = table[table["proxy"] == proxy]
            assert list(rows["epoch"]) == [0, EPOCHS, 2 * EPOCHS]  # numbered across rounds
            assert list(rows["round"]) == [0, 1, 2]
            assert (rows["n"] == 16).all()
        assert (results / f"{experiment}/curves.png").stat().st_size > 0
        assert (results / f"{experiment}/samples.png").stat().st_size > 0
    table = pd.read_csv(results / "results_table.csv")
    scored = table[table["experiment"] == "scored"]
    assert set(scored["method"]) == {"d3po round 1", "d3po round 2"}
    assert set(scored["proxy"]) == {"toy_safe", "brightness", "clip_score"}
    assert "**brightness**" in (results / "results_table.md").read_text()
    assert (workdir / "report.html").stat().st_size > 0
    ids = pd.read_csv(results / "samples/base/manifest.csv", dtype={"id": str})["id"]
    read_scores(results / "scores/base/brightness.csv", "brightness", list(ids))


def test_two_proxy_scored_rounds_train_on_the_rules_score_order(workdir: Path):
    """(b) each round trains on pairs from both rules' scores of its own set (Pareto)."""
    results = workdir / "results"
    for number in (1, 2):
        metrics = pd.read_csv(results / f"train/scored/d3po/seed0/round{number}/metrics.csv")
        assert list(metrics["epoch"]) == list(range(1, EPOCHS + 1))
        assert (metrics["units"] > 0).all()
        for proxy in ("brightness", "clip_score"):
            table = results / f"scores/feedback/scored/round{number}/{proxy}.csv"
            assert len(pd.read_csv(table)) == 16
    record = yaml.safe_load((results / "samples/feedback/scored/round2/sampler.json").read_text())
    assert record["adapter"].endswith(f"scored/d3po/seed0/round1/checkpoints/epoch_{EPOCHS:04d}")
    table = evaluation(workdir, "scored")
    for proxy in ("brightness", "clip_score"):
        before_after = per_round(table, proxy)
        print(f"held-out {proxy} (mean, 95% interval) per round: {before_after}")
        assert set(before_after) == {0, 1, 2}


def test_two_simulated_annotator_rounds_report_the_safe_rate_per_round(workdir: Path):
    """(c) the human loop with the toy annotator judging through the labelling app over HTTP:
    one decision per prompt and round, each written by the app; safe rate per round."""
    results = workdir / "results"
    for number in (1, 2):
        judgements = results / f"feedback/safe/round{number}/simulated.jsonl"
        lines = [json.loads(line) for line in judgements.read_text().splitlines()]
        assert len(lines) == 4  # one `score` decision per prompt (4 prompts)
        assert {(line["kind"], line["protocol"]) for line in lines} == {("score", "score")}
        assert len({line["decision"] for line in lines}) == 4  # ids the app gives
    safe = per_round(evaluation(workdir, "safe"), "toy_safe")
    print("held-out safe rate (mean, 95% Wilson interval) per round:", safe)
    assert set(safe) == {0, 1, 2}
    assert all(0 <= low <= mean <= high <= 1 for mean, low, high in safe.values())
