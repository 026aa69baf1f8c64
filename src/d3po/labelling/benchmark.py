"""``d3po label-benchmark``: decisions per second the labelling app sustains.

The app runs in a process of its own, as ``d3po label`` does, on a set of toy-world images;
``--annotators`` clients (threads, one HTTP connection each) each ask for a task and send a
decision, ``--decisions`` times, all at once. Every decision is fsync'd before its reply, so
the figure is bounded by the disk's flush time as much as by the app.

    d3po label-benchmark [--annotators 8] [--decisions 250] [--protocol best]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from d3po.labelling.server import app_process
from d3po.preferences import PROTOCOLS, read_judgements
from d3po.sample_sets import write_sample_set
from d3po.world import PROMPTS, render


def write_world_set(
    out_dir: Path, prompts: int, images_per_prompt: int, seed: int = 0, unsafe_rate: float = 0.5
) -> None:
    """A sample set (PNGs + manifest) of toy-world images drawn directly, without a model."""
    rng = np.random.default_rng(seed)
    chosen = [PROMPTS[i % len(PROMPTS)] for i in range(prompts)]
    images = [
        render(prompt, rng, unsafe=bool(rng.random() < unsafe_rate))[0]
        for prompt in chosen
        for _ in range(images_per_prompt)
    ]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (B, 3, H, W) in [0, 1]
    seeds = list(range(prompts))
    record = {"sampler": None, "model": "d3po.world (drawn directly, no model)", "adapter": None}
    write_sample_set(Path(out_dir), pixels, chosen, seeds, images_per_prompt, record)


def judge_all(url: str, annotator: str, protocol: str, limit: int) -> list[str]:
    """One client: up to ``limit`` decisions (image 1 best / A / all good); their ids."""
    saved = []
    with httpx.Client(base_url=url, timeout=60) as client:
        view = client.get("/api/next", params={"annotator": annotator}).json()
        while view["task"] is not None and len(saved) < limit:
            ids = [image["id"] for image in view["task"]["images"]]
            answer = {
                "best": {"best": ids[0]},
                "pairwise": {"winner": "a"},
                "score": {"scores": dict.fromkeys(ids, 1)},
            }[protocol]
            body = {"annotator": annotator, "task": view["task"]["key"], **answer}
            response = client.post("/api/decide", json=body)
            response.raise_for_status()
            view = response.json()
            saved.append(view["saved"])
    return saved


def run(annotators: int, decisions: int, protocol: str, images_per_prompt: int) -> float:
    """Decisions per second with ``annotators`` clients judging at once."""
    with tempfile.TemporaryDirectory() as folder:
        samples, record = Path(folder) / "samples", Path(folder) / "labels.jsonl"
        write_world_set(samples, decisions, images_per_prompt)
        options = ("--protocol", protocol, "--annotators-per-prompt", str(annotators))
        with app_process(samples, record, *options) as (url, _):
            names = [f"annotator{i}" for i in range(annotators)]
            start = time.perf_counter()
            with ThreadPoolExecutor(annotators) as pool:  # one thread per annotator, all at once
                saved = list(pool.map(lambda who: judge_all(url, who, protocol, decisions), names))
            seconds = time.perf_counter() - start
        total, recorded = sum(map(len, saved)), len(read_judgements(record))
        if not total == recorded == annotators * decisions:
            raise RuntimeError(f"{total} decisions confirmed, {recorded} recorded, "
                               f"{annotators * decisions} expected")  # fmt: skip
    return total / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="d3po label-benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=250, help="per annotator")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="best")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    args = parser.parse_args(argv)
    rate = run(args.annotators, args.decisions, args.protocol, args.images_per_prompt)
    print(
        f"{rate:.0f} decisions/s: {args.annotators} annotators x {args.decisions} decisions "
        f"({args.protocol}, {args.images_per_prompt} images per prompt, each fsync'd)"
    )
