"""Two CPU processes (gloo) train like one: same adapter on every rank, same as a single run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "train_ranks.py"
SETTINGS = {
    "method": "d3po",
    "prompts": ["a red circle", "a blue square", "a green triangle"],
    "objectives": ["jpeg_compressibility"],
    "sampler": {"num_steps": 3, "eta": 1.0, "guidance_scale": 2.0, "images_per_call": 8},
    "training": {
        "epochs": 2,
        "prompts_per_epoch": 4,
        "images_per_prompt": 3,
        "units_per_step": 3,  # 9 items a step: one process's share is padded
        "micro_batch_size": 8,
        "learning_rate": 1e-3,
        "max_grad_norm": 1e6,
    },
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(processes: int, out: Path, method: str) -> None:
    out.mkdir()
    settings = out / "settings.json"
    settings.write_text(json.dumps(SETTINGS | {"method": method}))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--nproc_per_node", str(processes), "--master_port", str(free_port())]
    environment = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*command, str(SCRIPT), str(settings), str(out)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d3po", "ddpo"])
def test_two_processes_train_like_one(tmp_path, method):
    run(2, tmp_path / "two", method)
    run(1, tmp_path / "one", method)
    rank0 = torch.load(tmp_path / "two" / "rank0.pt")
    rank1 = torch.load(tmp_path / "two" / "rank1.pt")
    single = torch.load(tmp_path / "one" / "rank0.pt")
    assert rank0.keys() == single.keys()
    moved = False
    for name, weight in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        scale = weight.abs().max().item()
        torch.testing.assert_close(rank0[name], weight, rtol=0, atol=1e-3 * scale + 1e-9)
        moved = moved or "lora_B" in name and weight.abs().max() > 0
    assert moved, "the adapter did not train"
    # the logged metrics are means over every process's items, the padding left out
    two, two_rank1, one = (
        json.loads((tmp_path / run / f"rank{rank}.json").read_text())
        for run, rank in (("two", 0), ("two", 1), ("one", 0))
    )
    # (a method's own diagnostics of a padded micro-batch count its copies: not compared)
    logged = ("samples_seen", "reward_mean", "reward_std", "units", "loss", "grad_norm")
    for row_two, row_rank1, row_one in zip(two, two_rank1, one, strict=True):
        assert {k: v for k, v in row_two.items() if not k.endswith("seconds")} == {
            k: v for k, v in row_rank1.items() if not k.endswith("seconds")
        }, "the ranks log different metrics"
        for key in logged:
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-3, abs=1e-4), key
