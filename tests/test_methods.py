"""Methods as plug-ins: the registry, one step of each method on the tiny model, the judged set
for the methods that accept one, and a new method in one file picked up by the workflow."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_feedback import judged_set  # noqa: F401 (a fixture)
from test_feedback import settings as judged_settings
from test_train import lora_weights, settings
from test_workflow import REPO, copy_workflow, job_counts, snakemake

from d3po.feedback import load_labelled
from d3po.methods import Feedback, method_classes
from d3po.train import Trainer

ALL_METHODS = ["d3po", "ddpo", "dpok", "preferred_image", "reward_weighted"]
SOURCE = str(REPO / "src")


def test_the_registry_finds_every_method_and_its_declarations():
    classes = method_classes()
    assert list(classes) == ALL_METHODS
    for name, cls in classes.items():
        assert cls.name == name
        assert cls.signal in ("reward", "preferences")
        assert isinstance(cls.accepts_judgements, bool)
        assert dataclasses.is_dataclass(cls.Options)
    accepting = [name for name, cls in classes.items() if cls.accepts_judgements]
    assert accepting == ["d3po", "preferred_image", "reward_weighted"]


def test_method_options_are_checked_and_filled_in():
    with pytest.raises(ValueError, match=r"method_options: unknown key\(s\) \['beta'\]"):
        dataclasses.replace(settings("ddpo"), method_options={"beta": 0.1})
    with pytest.raises(ValueError, match="unknown method 'ppo'; known methods: d3po, ddpo"):
        dataclasses.replace(settings("d3po"), method="ppo")
    filled = dataclasses.replace(settings("dpok"), method_options={"kl_weight": 0.5})
    assert filled.method_options["kl_weight"] == 0.5
    assert filled.method_options["reward_weight"] == 10.0  # the declared default


def test_float_settings_refuse_strings_and_booleans():
    from d3po.config import TrainingSpec, parse

    with pytest.raises(ValueError, match=r"training.learning_rate: expected float, got '3e-5'"):
        parse(TrainingSpec, {"learning_rate": "3e-5"}, "training")  # YAML 1.1: a string
    with pytest.raises(ValueError, match=r"method_options.beta: expected float, got True"):
        dataclasses.replace(settings("d3po"), method_options={"beta": True})


@torch.no_grad()
def objective(method: str, trainer: Trainer, items, trajectories) -> float:
    """What each method is meant to raise, computed from the model, not from its loss."""
    policy = trainer.policy(trajectories)
    if method == "d3po":  # the preferred image's steps become likelier than the other's
        winner = policy.log_prob(items["winner"], items["step"])
        loser = policy.log_prob(items["loser"], items["step"])
        return float((winner - loser).mean())
    if method in ("ddpo", "dpok"):  # likelier steps where the advantage is positive
        log_prob = policy.log_prob(items["unit"], items["step"])
        return float((items["advantage"] * log_prob).mean())
    # the denoising methods: a better fit to the (weighted) samples they train on
    train_steps = policy.scheduler.config.num_train_timesteps
    timesteps = (items["noise_level"] * train_steps).long()
    prediction, target = policy.noise_prediction(items["sample"], timesteps, items["noise"])
    error = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    return -float((items["sample_weight"] * error).mean())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_one_step_moves_the_objective_of_each_method_the_right_way(method):
    """One small Adam step over all of an epoch's items raises what the method is for: D3PO's
    preference margin, the advantage-weighted log-prob of DDPO and DPOK (whose KL term is zero
    at the start), the denoising methods' fit to their samples."""
    trainer = Trainer(settings(method, units_per_step=100, learning_rate=1e-4))
    trajectories = trainer.collect(1)
    feedback = Feedback(trajectories, trainer.score(trajectories))
    generator = torch.Generator().manual_seed(0)
    items = trainer.method.prepare(feedback, generator)
    assert items.num_units > 0
    before = objective(method, trainer, items, trajectories)
    trainer.update(items, trajectories, generator)
    after = objective(method, trainer, items, trajectories)
    assert after > before, (before, after)


@pytest.mark.parametrize("method", ["preferred_image", "reward_weighted"])
def test_the_supervised_baselines_train_on_a_judged_set(judged_set, method):  # noqa: F811
    """Image 0 of each prompt beats the other two: both baselines train on those 2 images."""
    trainer = Trainer(judged_settings(method), labelled=load_labelled(*judged_set))
    before = lora_weights(trainer)
    row = trainer.run_epoch()
    expected_units = {"preferred_image": 4, "reward_weighted": 2}  # 4 pairs, 2 winners
    assert row["units"] == expected_units[method]
    assert row["sample_weight"] == pytest.approx(1.0)
    after = lora_weights(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)


# --------------------------------------------------------------------------- the workflow


def readme_method() -> str:
    """The README's "Add a method" example, as a user would copy it."""
    readme = (REPO / "README.md").read_text()
    return re.search(r"## Add a method.*?```python\n(.*?)```", readme, re.DOTALL)[1]


def dry_run(workdir: Path, config: dict, pythonpath: str = SOURCE) -> tuple[int, str]:
    """A dry-run of ``config`` in ``workdir``, with the package (and plug-ins) on ``pythonpath``."""
    (workdir / "check.yaml").write_text(yaml.safe_dump(config))
    args = ("--dry-run", "--cores", "1", "--configfile", "check.yaml", "--replace-workflow-config")
    result = snakemake(workdir, *args, pythonpath=pythonpath)
    return result.returncode, result.stdout + result.stderr


def test_the_readme_method_in_one_file_is_picked_up_by_the_workflow_and_trains(tmp_path):
    plugins = tmp_path / "plugins"
    (plugins / "d3po" / "methods").mkdir(parents=True)
    (plugins / "d3po" / "methods" / "plain_ppo.py").write_text(readme_method())
    pythonpath = os.pathsep.join([str(plugins), SOURCE])
    (tmp_path / "work").mkdir()
    workdir = copy_workflow(tmp_path / "work")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["experiments"]["compressibility"]["methods"] = ["d3po", "plain_ppo"]
    config["methods"]["plain_ppo"] = {"clip_range": 0.01}

    returncode, output = dry_run(workdir, config, pythonpath)
    assert returncode == 0, output
    assert "results/train/compressibility/plain_ppo/seed0/metrics.csv" in output
    counts = job_counts(output)
    online_runs = sum(
        len(experiment["methods"]) * len(experiment["seeds"])
        for experiment in config["experiments"].values()
        if "judgements" not in experiment
    )
    assert counts["train"] == online_runs  # plain_ppo's run among them
    assert counts["train_round"] == 1  # safety_judged, one round

    returncode, output = dry_run(workdir, config)  # without the file: its only change
    assert returncode != 0
    assert "unknown method" in output and "plain_ppo" in output, output

    one_epoch = dataclasses.asdict(settings("ddpo", epochs=1)) | {"method": "plain_ppo"}
    one_epoch["method_options"] = {}
    run = tmp_path / "run"
    command = [sys.executable, "-m", "d3po", "train", "--settings", json.dumps(one_epoch),
               "--run-dir", str(run), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    environment = os.environ | {"PYTHONPATH": pythonpath}
    listed = subprocess.run([sys.executable, "-m", "d3po", "methods"], env=environment,
                            capture_output=True, text=True)  # fmt: skip
    assert "    methods.plain_ppo.clip_range = 0.2 (float)\n" in listed.stdout, listed
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1] and metrics["units"][0] == 6  # 2 prompts x 3 images
    assert np.isfinite(metrics["loss"][0]) and metrics["grad_norm"][0] > 0


HALF_DECLARED = """
from d3po.methods.base import Method


class Half(Method):
    name = "half"
    signal = "rewards"
"""


def test_a_method_missing_a_declaration_is_named_by_the_registry(tmp_path):
    plugin = tmp_path / "d3po" / "methods" / "half.py"
    plugin.parent.mkdir(parents=True)
    plugin.write_text(HALF_DECLARED)
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), SOURCE])}
    command = [sys.executable, "-m", "d3po", "methods"]
    listed = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert listed.returncode != 0
    message = "method 'half' (d3po.methods.half) does not declare ['summary', 'accepts_judgements']"
    assert message in listed.stderr, listed.stderr
    plugin.write_text(HALF_DECLARED + '    summary = "half"\n    accepts_judgements = False\n')
    listed = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert "signal must be one of ('reward', 'preferences'), got 'rewards'" in listed.stderr


@pytest.mark.parametrize(
    "methods, judged, accepted",
    [
        (["reward_weighted", "preferred_image", "d3po"], True, True),
        (["dpok"], True, False),
        (["ddpo"], True, False),
        (["dpok", "ddpo", "reward_weighted", "preferred_image", "d3po"], False, True),
    ],
)
def test_the_config_check_accepts_each_method_only_where_it_can_run(
    tmp_path, methods, judged, accepted
):
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    name = "safety_judged" if judged else "compressibility"
    config["experiments"] = {name: config["experiments"][name] | {"methods": methods}}
    returncode, output = dry_run(workdir, config)
    assert (returncode == 0) == accepted, output
    if not accepted:
        assert f"experiments.{name}.methods: {methods[0]} does not train on human" in output


@pytest.mark.parametrize(
    "options, needles",
    [
        ({"d3po": {"beta": -0.1}}, ["methods.d3po.beta: must be > 0"]),
        ({"dpok": {"kl": 0.1}}, ["methods.dpok: unknown key(s) ['kl']", "kl_weight"]),
        ({"ppo": {}}, ["methods.ppo = 'ppo': unknown method", "dpok"]),
    ],
)
def test_method_options_are_checked_before_any_job(tmp_path, options, needles):
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = options
    returncode, output = dry_run(workdir, config)
    assert returncode != 0
    for needle in needles:
        assert needle in output, output
