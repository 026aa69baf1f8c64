"""Throughput and memory of one D3PO epoch, and a smoke check of what a (GPU) job sees.

    d3po benchmark [--model tiny-random|sd15-random|toy|FOLDER] [--prompts N] [--steps T] ...
    d3po gpu-smoke

The benchmark runs the real training pieces (sampler, reference pass with the adapter off,
micro-batched policy forward/backward, optimizer step) on synthetic preferences (every pair of
a group is used, winner chosen by a coin), so it measures compute, not a proxy. ``sd15-random``
is a UNet with Stable Diffusion 1.5's configuration and random weights (860 M parameters,
64x64 latents = 512 px), with a one-layer 768-wide text encoder standing in for CLIP: the UNet
dominates the cost, and nothing needs downloading.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

from d3po.config import SamplerSpec, TrainingSpec, TrainSettings
from d3po.methods import Feedback
from d3po.sampling import sample


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3po benchmark", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="tiny-random", help="tiny-random, sd15-random, toy or a folder"
    )
    parser.add_argument("--prompts", type=int, default=8, help="prompts sampled per epoch")
    parser.add_argument("--images-per-prompt", type=int, default=2, help="K (pairs = K(K-1)/2)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps, all trained")
    parser.add_argument("--sample-batch", type=int, default=32, help="images per UNet call")
    parser.add_argument("--micro-batch", type=int, default=32, help="(pair, step) items per pass")
    parser.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--epochs", type=int, default=2, help="the first one is a warm-up")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def benchmark_settings(args: argparse.Namespace) -> TrainSettings:
    from d3po.models import ModelSpec

    dtype = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.precision]
    return TrainSettings(
        method="d3po",
        prompts=("a photo of a cat", "a photo of a dog", "a red circle", "a blue square"),
        objectives=("jpeg_compressibility",),
        model=ModelSpec(source=args.model, dtype=dtype),
        sampler=SamplerSpec(num_steps=args.steps, images_per_call=args.sample_batch),
        training=TrainingSpec(
            prompts_per_epoch=args.prompts,
            images_per_prompt=args.images_per_prompt,
            units_per_step=1,  # one pair per optimizer step, as in the paper
            micro_batch_size=args.micro_batch,
            mixed_precision=args.precision,
            gradient_checkpointing=args.gradient_checkpointing,
        ),
    )


def timed_epoch(trainer, rng: np.random.Generator) -> dict[str, float]:
    """One D3PO epoch with a coin for the judge, timing its three phases."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    trainer.epoch += 1
    start = time.perf_counter()
    trajectories = trainer.sample_share(trainer.epoch)  # the training loop's own sampling call
    synchronize()
    sampled = time.perf_counter()
    trajectories.reference_log_probs = trainer.reference_log_probs(trajectories)
    scores = rng.random((len(trajectories.prompts), 1))
    generator = torch.Generator().manual_seed(trainer.epoch)
    items = trainer.method.prepare(Feedback(trajectories, scores), generator)
    synchronize()
    referenced = time.perf_counter()
    trainer.update(items, trajectories, generator)
    synchronize()
    done = time.perf_counter()
    return {
        "images": len(trajectories.prompts),
        "pairs": items.num_units,
        "sampling_s": sampled - start,
        "reference_s": referenced - sampled,
        "update_s": done - referenced,
        "epoch_s": done - start,
    }


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def main(argv: list[str] | None = None) -> dict:
    from d3po.train import Trainer

    args = build_parser().parse_args(argv)
    settings = benchmark_settings(args)
    trainer = Trainer(settings)
    rng = np.random.default_rng(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    epochs = [timed_epoch(trainer, rng) for _ in range(args.epochs)]
    measured = epochs[1:] or epochs  # the first epoch pays for warm-up (allocations, kernels)
    figures = {
        "model": args.model,
        "device": str(trainer.accelerator.device),
        "precision": args.precision,
        "steps": args.steps,
        "resolution_px": trainer.pipe.unet.config.sample_size * (8 if trainer.pipe.vae else 1),
        "images_per_epoch": measured[0]["images"],
        "pairs_per_epoch": float(np.mean([e["pairs"] for e in measured])),
        **{
            key: float(np.mean([e[key] for e in measured]))
            for key in measured[0]
            if key.endswith("_s")
        },
        "peak_memory_gib": peak_memory_gib(),
    }
    figures["pairs_per_s"] = figures["pairs_per_epoch"] / figures["epoch_s"]
    figures["images_per_s_sampling"] = figures["images_per_epoch"] / figures["sampling_s"]
    report(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return figures


def report(figures: dict) -> None:
    print(
        f"D3PO epoch on {figures['model']} ({figures['device']}, precision {figures['precision']}, "
        f"{figures['steps']} steps, {figures['resolution_px']} px)\n"
        f"  {figures['images_per_epoch']} images, {figures['pairs_per_epoch']:.0f} pairs: "
        f"sampling {figures['sampling_s']:.2f} s, reference {figures['reference_s']:.2f} s, "
        f"update {figures['update_s']:.2f} s, epoch {figures['epoch_s']:.2f} s\n"
        f"  throughput {figures['pairs_per_s']:.3f} pairs/s "
        f"({figures['images_per_s_sampling']:.2f} images/s sampling); "
        f"peak memory {figures['peak_memory_gib']:.2f} GiB"
    )


def gpu_smoke() -> None:
    """Print what this job sees: devices, versions, and one tiny forward pass."""
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"CUDA available: {torch.cuda.is_available()}, CUDA {torch.version.cuda}")
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index} {properties.name}, {properties.total_memory / 2**30:.1f} GiB")
    from d3po.models import ModelSpec, load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(ModelSpec(source="tiny-random"), device)
    start = time.perf_counter()
    trajectories = sample(pipe, ["a red circle"], 2, [0], SamplerSpec(num_steps=4))
    print(
        f"tiny model on {device}: 2 images x 4 steps in {time.perf_counter() - start:.2f} s, "
        f"finite: {bool(torch.isfinite(trajectories.images).all())}"
    )
