"""Throughput, memory and compute efficiency of D3PO epochs, and a smoke check of what a (GPU)
job sees.

    d3po benchmark [--model tiny-random|sd15-random|toy|FOLDER] [--prompts N] [--steps T] ...
    d3po gpu-smoke

The benchmark runs epochs of the training loop itself (``Trainer.run_epoch``: sampling, JPEG
scoring, the reference pass with the adapter off, micro-batched updates) and reads the seconds
of each phase from the epoch's metrics row (the ``*_seconds`` columns of metrics.csv), so it
measures exactly what a training job does. ``sd15-random`` is a UNet with Stable Diffusion
1.5's configuration and random weights (860 M parameters, 64x64 latents = 512 px), with a
one-layer 768-wide text encoder standing in for CLIP: the UNet dominates the cost, and nothing
needs downloading.

Compute: the UNet's FLOPs of one item (one latent, one prompt), counted by
``torch.utils.flop_counter.FlopCounterMode`` on one forward, times the UNet items of an epoch
(sampling and the reference pass: images x steps x 2 with guidance; the update: pairs x steps x
2 images x 2, forward and backward counted as 3 forwards; recomputation under gradient
checkpointing is not counted, nor the VAE and the text encoder). Divided by the seconds, that is
the achieved TFLOP/s, compared with the device's peak where it is known (``PEAK_TFLOPS``).

The figures are printed and written as JSON, by default to
``benchmarks/<date>-<model>-<device>.json`` with the date, the git commit, the package versions
and the CPU (d3po.provenance), the device and the flags.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from d3po.config import SamplerSpec, TrainingSpec, TrainSettings
from d3po.models import ModelSpec, load_pipeline
from d3po.provenance import git_commit, hardware, versions
from d3po.sampling import latent_shape, sample
from d3po.train import PHASES, Trainer

# Dense bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of the CUDA device's name.
PEAK_TFLOPS = {
    "H200": (790.0, "bf16 matmul peak measured on the project's H200 (datasheet: 989 dense)"),
    "H100": (989.0, "datasheet, dense bf16, SXM (PCIe: 756)"),
    "A100": (312.0, "datasheet, dense bf16"),
}


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
    parser.add_argument(
        "--compile",
        action="store_true",
        help="regional torch.compile of the UNet's repeated transformer blocks (in place, shared "
        "by sampling, the reference pass and training); compile time lands in the warm-up epoch",
    )
    parser.add_argument("--epochs", type=int, default=2, help="the first one is a warm-up")
    parser.add_argument(
        "--json", help="where to write the figures (default: benchmarks/DATE-MODEL-DEVICE.json)"
    )
    return parser


def benchmark_settings(args: argparse.Namespace) -> TrainSettings:
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


def unet_flops_per_item(pipe) -> float:
    """FLOPs of one UNet forward on one item (a latent and a prompt embedding)."""
    unet = pipe.unet
    latents = torch.zeros(1, *latent_shape(pipe), device=unet.device, dtype=unet.dtype)
    embeds, _ = pipe.encode_prompt([""], pipe.text_encoder.device, 1, False)
    embeds = embeds.to(unet.device, unet.dtype)
    timestep = torch.tensor([500], device=unet.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents, timestep, embeds)
    return float(counter.get_total_flops())


def epoch_unet_items(settings: TrainSettings, images: int, pairs: float) -> dict[str, float]:
    """UNet items (forward-equivalents) of each phase of a D3PO epoch that trains every step."""
    guidance = 1 if settings.sampler.guidance_scale == 1.0 else 2
    sampled = images * settings.sampler.num_steps * guidance
    trained = pairs * settings.sampler.num_steps * 2 * guidance  # winner and loser
    return {"sampling": sampled, "reference": sampled, "update": 3 * trained}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The device's peak TFLOP/s at ``precision`` and where it comes from, or None and why."""
    name = device_name(device)
    if device.type != "cuda" or precision == "no":
        return None, f"no known peak for {name} at precision '{precision}'"
    for key, (peak, source) in PEAK_TFLOPS.items():
        if key in name:
            return peak, source
    return None, f"no known peak for {name} (add it to d3po.benchmark.PEAK_TFLOPS)"


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    settings = benchmark_settings(args)
    trainer = Trainer(settings)
    device = trainer.accelerator.device
    if args.compile:
        trainer.pipe.unet.compile_repeated_blocks()  # diffusers: each BasicTransformerBlock
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rows = [trainer.run_epoch() for _ in range(args.epochs)]
    measured = rows[1:] or rows  # the first epoch pays for warm-up (allocations, kernels)
    figures = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "environment": versions() | hardware(),
        "command": "d3po benchmark " + " ".join(sys.argv[2:] if argv is None else argv),
        "flags": vars(args),
        "model": args.model,
        "precision": args.precision,
        "steps": args.steps,
        "resolution_px": trainer.pipe.unet.config.sample_size * (8 if trainer.pipe.vae else 1),
        "images_per_epoch": args.prompts * args.images_per_prompt,
        "pairs_per_epoch": float(np.mean([row["units"] for row in measured])),
        **{f"{p}_s": float(np.mean([row[f"{p}_seconds"] for row in measured])) for p in PHASES},
        "epoch_s": float(np.mean([row["seconds"] for row in measured])),
        "warmup_epoch_s": rows[0]["seconds"],  # with --compile: includes the compile time
        "peak_memory_gib": peak_memory_gib(),
    }
    figures["pairs_per_s"] = figures["pairs_per_epoch"] / figures["epoch_s"]
    figures["images_per_s_sampling"] = figures["images_per_epoch"] / figures["sampling_s"]
    figures |= compute_figures(trainer, figures)
    report(figures)
    path = Path(args.json or default_json_path(figures))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"  written to {path}")
    return figures


def compute_figures(trainer, figures: dict) -> dict:
    """Achieved UNet TFLOP/s per phase and for the epoch, and their share of the peak."""
    per_item = unet_flops_per_item(trainer.pipe)
    items = epoch_unet_items(
        trainer.settings, figures["images_per_epoch"], figures["pairs_per_epoch"]
    )
    tflop = {phase: count * per_item / 1e12 for phase, count in items.items()}
    peak, peak_source = device_peak(trainer.accelerator.device, figures["precision"])
    achieved = sum(tflop.values()) / figures["epoch_s"]
    return {
        "unet_gflop_per_item": per_item / 1e9,
        "tflop_per_epoch": tflop,
        "tflops": {
            **{phase: tflop[phase] / max(figures[f"{phase}_s"], 1e-12) for phase in tflop},
            "epoch": achieved,
        },
        "peak_tflops": peak,
        "peak_source": peak_source,
        "share_of_peak": None if peak is None else achieved / peak,
    }


def default_json_path(figures: dict) -> Path:
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")

    device = "cpu" if figures["device"] == "cpu" else figures["device_name"]
    model = Path(figures["model"]).name
    return Path("benchmarks") / f"{figures['date'][:10]}-{slug(model)}-{slug(device)}.json"


def report(figures: dict) -> None:
    tflops = figures["tflops"]
    lines = [
        f"D3PO epoch on {figures['model']} ({figures['device_name']}, precision "
        f"{figures['precision']}, {figures['steps']} steps, {figures['resolution_px']} px, "
        f"commit {figures['commit']})",
        f"  {figures['images_per_epoch']} images, {figures['pairs_per_epoch']:.0f} pairs; "
        f"UNet {figures['unet_gflop_per_item']:.2f} GFLOP per item forward",
        f"  {'phase':<14}{'seconds':>9}{'share':>8}{'TFLOP/s':>10}",
    ]
    for phase in PHASES:
        seconds = figures[f"{phase}_s"]
        speed = f"{tflops[phase]:10.3f}" if phase in tflops else f"{'':>10}"
        lines.append(f"  {phase:<14}{seconds:9.2f}{seconds / figures['epoch_s']:8.1%}{speed}")
    lines.append(f"  {'epoch':<14}{figures['epoch_s']:9.2f}{'':>8}{tflops['epoch']:10.3f}")
    lines.append(f"  {'warm-up epoch':<14}{figures['warmup_epoch_s']:9.2f}")
    share = (
        f"{figures['share_of_peak']:.1%} of {figures['peak_tflops']:.0f} TFLOP/s "
        f"({figures['peak_source']})"
        if figures["peak_tflops"]
        else figures["peak_source"]
    )
    lines += [
        f"  throughput {figures['pairs_per_s']:.3f} pairs/s "
        f"({figures['images_per_s_sampling']:.2f} images/s sampling); "
        f"peak memory {figures['peak_memory_gib']:.2f} GiB",
        f"  share of peak: {share}",
    ]
    print("\n".join(lines))


def gpu_smoke() -> None:
    """Print what this job sees: devices, versions, and one tiny forward pass."""
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"CUDA available: {torch.cuda.is_available()}, CUDA {torch.version.cuda}")
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index} {properties.name}, {properties.total_memory / 2**30:.1f} GiB")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(ModelSpec(source="tiny-random"), device)
    start = time.perf_counter()
    trajectories = sample(pipe, ["a red circle"], 2, [0], SamplerSpec(num_steps=4))
    print(
        f"tiny model on {device}: 2 images x 4 steps in {time.perf_counter() - start:.2f} s, "
        f"finite: {bool(torch.isfinite(trajectories.images).all())}"
    )
