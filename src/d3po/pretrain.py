"""Pretrain the embedded pixel-space model on the toy world (``d3po pretrain-toy``).

Standard denoising diffusion training (Ho et al., 2020): for an image x_0 of the world, a
timestep t and noise eps, the UNet predicts eps from x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t)
eps, with an MSE loss. The UNet and the text encoder are trained together; 10 % of the prompts
are replaced by the empty prompt so that classifier-free guidance works at sampling time. An
exponential moving average of the weights is what gets saved.

The result is the ``toy`` model (``ModelSpec(source="toy")``): a base policy that draws the
world's defects (distorted shapes, unsafe marks) at about their training rates, which D3PO and
DDPO then fine-tune away, judged exactly by ``d3po.judges``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d3po.config import SamplerSpec
from d3po.judges import judge
from d3po.models import TOY_MODEL_DIR, ModelSpec, build_tiny_pipeline, load_pipeline
from d3po.sampling import sample
from d3po.stats import mean_interval
from d3po.world import PROMPTS, sample_dataset


@dataclass(frozen=True)
class PretrainSpec:
    """Hyper-parameters of the toy model's pretraining."""

    steps: int = 1500
    """Optimiser steps."""
    seed: int = 0
    """Seed of the initial weights, the data and the noise."""
    batch_size: int = 64
    """Images per step; every step draws fresh images from the world."""
    lr: float = 1e-3
    """AdamW learning rate (after a linear warm-up of ``warmup`` steps)."""
    warmup: int = 50
    ema_decay: float = 0.995
    """Decay of the weight average that gets saved."""
    prompt_dropout: float = 0.1
    """Share of prompts replaced by '' (trains the unconditional model for guidance)."""
    distortion_rate: float = 0.35
    """Share of world images with a bite taken out of the shape."""
    unsafe_rate: float = 0.3
    """Share of world images with the black corner mark."""
    max_minutes: float | None = None
    """Stop early after this much wall time (the learning-rate decay follows the time then)."""
    init_from: str | None = None
    """Continue from this saved model folder instead of random weights."""
    log_every: int = 50
    threads: int = 1
    """torch CPU threads; on a shared 2-core machine 2 threads thrash (measured 4-10x slower)."""


def pretrain(out_dir: Path | str, spec: PretrainSpec = PretrainSpec()):
    """Train the toy model, save it to ``out_dir`` (diffusers layout) with a TRAINING.md."""
    torch.set_num_threads(spec.threads)
    out_dir = Path(out_dir)
    pipe = build_tiny_pipeline(seed=spec.seed) if spec.init_from is None else _load(spec.init_from)
    started = time.time()
    losses = _train(pipe, spec)
    minutes = (time.time() - started) / 60
    pipe.save_pretrained(out_dir, safe_serialization=True)
    log = {"spec": asdict(spec), "minutes": round(minutes, 2), "losses": losses}
    if spec.init_from and (Path(spec.init_from) / "training_log.json").exists():
        log["previous"] = json.loads((Path(spec.init_from) / "training_log.json").read_text())
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=1))
    write_report(out_dir)
    return pipe


def _load(folder: Path | str):
    return load_pipeline(ModelSpec(source=str(Path(folder).resolve())))


def _train(pipe, spec: PretrainSpec) -> list[tuple[int, float]]:
    """The training loop; the EMA weights are copied into ``pipe`` at the end."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    models = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    models.train().requires_grad_(True)
    ema = copy.deepcopy(models).requires_grad_(False)
    optimizer = torch.optim.AdamW(models.parameters(), lr=spec.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(spec.seed)
    losses, running, started = [], [], time.time()
    budget = 60 * spec.max_minutes if spec.max_minutes else float("inf")
    for step in range(spec.steps):
        progress = max(step / spec.steps, (time.time() - started) / budget)
        if progress >= 1:
            print(f"stopped at step {step}: the {spec.max_minutes} min budget is spent", flush=True)
            if running:
                losses.append((step, float(np.mean(running))))
            break
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * _lr_factor(step, progress, spec.warmup)
        loss = _loss(pipe, noise_scheduler, spec, step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        optimizer.step()
        _update_ema(ema, models, min(spec.ema_decay, (1 + step) / (10 + step)))
        running.append(loss.item())
        if (step + 1) % spec.log_every == 0 or step + 1 == spec.steps:
            losses.append((step + 1, float(np.mean(running))))
            rate = (step + 1) * spec.batch_size / (time.time() - started)
            print(
                f"step {step + 1}/{spec.steps} loss {losses[-1][1]:.4f} ({rate:.0f} img/s)",
                flush=True,
            )
            running = []
    models.load_state_dict(ema.state_dict())
    models.eval().requires_grad_(False)
    return losses


def _loss(pipe, noise_scheduler, spec: PretrainSpec, step: int, generator) -> torch.Tensor:
    """Epsilon-prediction MSE on a fresh batch of world images."""
    data_seed = spec.seed * 1_000_003 + step  # fresh images every step, reproducible
    images, prompts, _ = sample_dataset(
        spec.batch_size,
        data_seed,
        spec.distortion_rate,
        spec.unsafe_rate,
        pipe.unet.config.sample_size,
    )  # (B, 3, H, W) in [-1, 1]
    drop = torch.rand(len(prompts), generator=generator) < spec.prompt_dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    embeds, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)  # (B, L, D)
    noise = torch.randn(images.shape, generator=generator)
    t = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(images),), generator=generator
    )
    noisy = noise_scheduler.add_noise(images, noise, t)
    prediction = pipe.unet(noisy, t, embeds).sample
    return F.mse_loss(prediction, noise)


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 10 % at ``progress`` 1."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for average, current in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(current, 1 - decay)


# --------------------------------------------------------------------------- evaluation


def evaluate(pipe, images_per_prompt: int = 8, seed: int = 10_000, guidance_scale: float = 4.0):
    """Judge base-model samples on all world prompts (held-out seeds, DDIM 20 steps, eta 1).

    Returns {judge name: (rate, low, high)} with Wilson 95 % intervals.
    """
    prompts = [p for p in PROMPTS for _ in range(images_per_prompt)]
    seeds = [seed + i for i in range(len(prompts))]
    spec = SamplerSpec(num_steps=20, eta=1.0, guidance_scale=guidance_scale, images_per_call=64)
    images = sample(pipe, prompts, 1, seeds, spec).images  # (N, 3, H, W) in [0, 1]
    verdicts = judge(images, prompts)
    return {name: (float(flags.mean()), *mean_interval(flags)) for name, flags in verdicts.items()}


def write_report(out_dir: Path | str, guidance_scale: float = 4.0) -> dict:
    """Judge the saved model and write out_dir/TRAINING.md (from training_log.json)."""
    out_dir = Path(out_dir)
    log = json.loads((out_dir / "training_log.json").read_text())
    pipe = _load(out_dir)
    scores = evaluate(pipe, guidance_scale=guidance_scale)
    lines = [
        "# The toy model",
        "",
        "The embedded pixel-space model (1.7 M parameters, 16x16 RGB) pretrained on the world of",
        "`d3po.world` by `d3po.pretrain`, in these stages (each continues the one before):",
        "",
        *_stage_lines(log),
        "",
        "Judge scores of 192 samples (8 per prompt, held-out seeds 10000+, DDIM 20 steps, eta 1,",
        f"guidance {guidance_scale}), with Wilson 95 % intervals:",
        "",
        "| judge | rate | 95 % CI |",
        "|---|---|---|",
    ]
    for name, (rate, low, high) in scores.items():
        lines.append(f"| {name} | {rate:.3f} | {low:.3f}-{high:.3f} |")
    (out_dir / "TRAINING.md").write_text("\n".join(lines) + "\n")
    return scores


def _stage_lines(log: dict) -> list[str]:
    """One paragraph per training stage, oldest first, with the command that reruns it."""
    stages = [log]
    while "previous" in stages[0]:
        stages.insert(0, stages[0]["previous"])
    lines = []
    for number, stage in enumerate(stages, start=1):
        spec = stage["spec"]
        command = (
            f"d3po pretrain-toy --out STAGE{number} --steps {spec['steps']} --seed {spec['seed']} "
            f"--batch-size {spec['batch_size']} --lr {spec['lr']} "
            f"--distortion-rate {spec['distortion_rate']} --unsafe-rate {spec['unsafe_rate']}"
        )
        if spec["max_minutes"]:
            command += f" --max-minutes {spec['max_minutes']}"
        if number > 1:
            command += f" --init-from STAGE{number - 1}"
        lines += [
            f"{number}. `{command}`: {stage['losses'][-1][0]} steps done, "
            f"{stage['minutes']:.1f} min on a shared 2-core CPU, final loss "
            f"{stage['losses'][-1][1]:.4f}; EMA {spec['ema_decay']}, prompt dropout "
            f"{spec['prompt_dropout']}, data: distortion rate {spec['distortion_rate']}, unsafe "
            f"rate {spec['unsafe_rate']} (fresh images every step).",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    """CLI: ``d3po pretrain-toy --out DIR --steps N --seed S``."""
    parser = argparse.ArgumentParser(prog="d3po pretrain-toy", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=TOY_MODEL_DIR, help="output model folder")
    parser.add_argument("--steps", type=int, default=PretrainSpec.steps)
    parser.add_argument("--seed", type=int, default=PretrainSpec.seed)
    parser.add_argument("--batch-size", type=int, default=PretrainSpec.batch_size)
    parser.add_argument("--lr", type=float, default=PretrainSpec.lr)
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-time cap")
    parser.add_argument("--init-from", default=None, help="continue from this model folder")
    parser.add_argument("--distortion-rate", type=float, default=PretrainSpec.distortion_rate)
    parser.add_argument("--unsafe-rate", type=float, default=PretrainSpec.unsafe_rate)
    parser.add_argument("--report-only", action="store_true", help="only rewrite TRAINING.md")
    args = parser.parse_args(argv)
    if args.report_only:
        print(write_report(args.out))
        return
    # every option named after a PretrainSpec field sets it (--batch-size: batch_size)
    spec_fields = {field.name for field in fields(PretrainSpec)}
    given = {name: value for name, value in vars(args).items() if name in spec_fields}
    pretrain(args.out, PretrainSpec(**given))
    print(f"saved the toy model to {args.out}")


if __name__ == "__main__":
    main()
