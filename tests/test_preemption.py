"""A training job killed mid-run (SIGKILL, as a cluster preemption) resumes where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_train import without_timings

SETTINGS = {
    "method": "ddpo",
    "prompts": ["a red circle", "a blue square"],
    "objectives": ["jpeg_incompressibility"],
    "sampler": {"num_steps": 3, "eta": 1.0, "guidance_scale": 2.0, "images_per_call": 8},
    "training": {
        "epochs": 5,
        "checkpoint_every": 1,
        "prompts_per_epoch": 2,
        "images_per_prompt": 2,
        "units_per_step": 2,
        "learning_rate": 1e-3,
    },
    "method_options": {"buffer_size": 4, "min_count": 2},  # buffers matter after resume
}


def command(tmp_path: Path, name: str) -> list[str]:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    return [
        sys.executable,
        "-m",
        "d3po",
        "train",
        "--settings",
        str(settings),
        "--run-dir",
        str(tmp_path / name / "run"),
        "--state-dir",
        str(tmp_path / name / "state"),
    ]


def environment() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def kill_after_checkpoint(arguments: list[str], checkpoint: Path, timeout: float = 300) -> None:
    process = subprocess.Popen(arguments, env=environment(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    subprocess.run(command(tmp_path, "full"), env=environment(), check=True, capture_output=True)

    interrupted = command(tmp_path, "killed")
    kill_after_checkpoint(interrupted, tmp_path / "killed" / "state" / "checkpoints" / "epoch_0002")
    assert not (tmp_path / "killed" / "run" / "metrics.csv").exists()
    resumed = subprocess.run(interrupted, env=environment(), check=True, capture_output=True)
    assert "resumed from" in resumed.stdout.decode()

    expected = without_timings(pd.read_csv(tmp_path / "full" / "run" / "metrics.csv"))
    actual = without_timings(pd.read_csv(tmp_path / "killed" / "run" / "metrics.csv"))
    pd.testing.assert_frame_equal(actual, expected)
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "run" / "checkpoints").iterdir())
    assert checkpoints == [f"epoch_{e:04d}" for e in range(1, 6)]


def test_corrupt_state_is_reported_and_left_alone(tmp_path):
    from d3po.config import TrainSettings, parse
    from d3po.train import Trainer, save_state, train

    settings = parse(TrainSettings, SETTINGS)
    trainer = Trainer(settings)
    trainer.run_epoch()
    save_state(trainer, tmp_path / "state")  # a run preempted after its first epoch
    trainer_state = tmp_path / "state" / "latest" / "trainer.pt"
    trainer_state.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="cannot read the training state"):
        train(settings, tmp_path / "run", tmp_path / "state")
    assert trainer_state.read_bytes() == b"not a torch file"
