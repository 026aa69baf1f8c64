"""Held-out sample sets: fixed prompts and seeds, the base model or any checkpoint.

Every model of an experiment is evaluated on the same prompts and initial noises: the seed of
prompt i is derived from (settings.seed, i), so the base model and each checkpoint see exactly
the same x_T and step noises, and differences come from the weights alone. A sample set is a
folder of PNGs with a ``manifest.csv`` (id, prompt, group, seed, path) that scoring reads, and
a ``sampler.json`` recording how the set was sampled (the sampler, the adapter), so that training
on judgements of the set can refuse a different sampler (d3po.feedback.check_sampler).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from d3po.config import SampleSettings
from d3po.models import load_lora, load_pipeline
from d3po.sampling import Trajectories, concatenate, sample, save_trajectories


def evaluation_seeds(seed: int, count: int) -> list[int]:
    """One fixed initial-noise seed per held-out prompt."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def write_samples(
    settings: SampleSettings,
    out_dir: Path,
    adapter: Path | None = None,
    device: str | None = None,
    keep_trajectories: bool = False,
) -> pd.DataFrame:
    """Sample every prompt K times (one initial noise per prompt) and write a sample set.

    With ``keep_trajectories`` the set also holds ``trajectories.pt`` (every latent of every
    step), so that D3PO can later train on judgements of these very images (d3po.feedback).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(settings.model, device)
    if adapter is not None:
        load_lora(pipe, adapter)
    return _sample_and_write(pipe, settings, out_dir, adapter, keep_trajectories)


def write_checkpoint_samples(
    settings: SampleSettings, checkpoints: list[tuple[Path, Path]], device: str | None = None
) -> None:
    """One sample set per (adapter folder, output folder): all checkpoints of a training run
    in one job, loading the model once (a GPU job per checkpoint spent most of its time
    starting)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(settings.model, device)
    for adapter, out_dir in checkpoints:
        load_lora(pipe, adapter)
        _sample_and_write(pipe, settings, out_dir, adapter)
        pipe.unload_lora_weights()


def _sample_and_write(
    pipe,
    settings: SampleSettings,
    out_dir: Path,
    adapter: Path | None,
    keep_trajectories: bool = False,
) -> pd.DataFrame:
    prompts = list(settings.prompts)
    seeds = evaluation_seeds(settings.seed, len(prompts))
    parts = []
    for start in range(0, len(prompts), settings.sampler.images_per_call):
        batch = slice(start, start + settings.sampler.images_per_call)
        parts.append(
            sample(pipe, prompts[batch], settings.images_per_prompt, seeds[batch], settings.sampler)
        )
    trajectories = concatenate(parts)
    extra = {"trajectories.pt": trajectories} if keep_trajectories else {}
    record = sampler_record(settings, adapter)
    return write_sample_set(
        trajectories.images, prompts, seeds, settings.images_per_prompt, out_dir, extra, record
    )


def sampler_record(settings: SampleSettings, adapter: Path | None) -> dict:
    """What ``sampler.json`` holds: the sampling policy's settings and the adapter, if any.

    ``log_prob_reduction`` is the reduction of the log-probs kept in ``trajectories.pt``
    (``sample``'s default), which a later round uses as its reference policy.
    """
    return {
        "sampler": dataclasses.asdict(settings.sampler),
        "log_prob_reduction": "mean",
        "model": settings.model.source,
        "adapter": None if adapter is None else str(adapter),
    }


def write_sample_set(
    images: torch.Tensor,
    prompts: list[str],
    seeds: list[int],
    k: int,
    out_dir: Path,
    trajectories: dict[str, Trajectories],
    record: dict,
) -> pd.DataFrame:
    """PNGs + manifest, written to a temporary folder and renamed into place when complete."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pixels = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().cpu().numpy()
    rows = []
    for index, array in enumerate(pixels):
        group = index // k
        name = f"{group:04d}_{index % k:02d}.png"
        Image.fromarray(array).save(staging / name)
        rows.append(
            {
                "id": name[:-4],
                "prompt": prompts[group],
                "group": group,
                "seed": seeds[group],
                "path": name,
            }
        )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(staging / "manifest.csv", index=False)
    (staging / "sampler.json").write_text(json.dumps(record, indent=1) + "\n")
    for name, value in trajectories.items():
        save_trajectories(value, staging / name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return manifest
