"""``d3po sample``: sample sets of the base model or of any checkpoint (LoRA adapter).

Every model of an experiment is sampled on the same prompts and initial noises: the seed of
prompt i is derived from (settings.seed, i), so the base model and each checkpoint see exactly
the same x_T and step noises, and differences come from the weights alone. The sets are
written in the format of ``d3po.sample_sets`` (PNGs, manifest.csv, sampler.json and, for
feedback rounds, trajectories.pt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from d3po.config import SampleSettings
from d3po.models import load_lora, load_pipeline
from d3po.sample_sets import sampler_record, write_sample_set
from d3po.sampling import concatenate, sample


def evaluation_seeds(seed: int, count: int) -> list[int]:
    """One fixed initial-noise seed per held-out prompt."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


def write_samples(
    settings: SampleSettings,
    out_dir: Path,
    adapter: Path | None = None,
    keep_trajectories: bool = False,
) -> pd.DataFrame:
    """Sample every prompt K times (one initial noise per prompt) and write a sample set.

    With ``keep_trajectories`` the set also holds ``trajectories.pt`` (every latent of every
    step), so that D3PO can later train on judgements of these very images (d3po.feedback).
    """
    pipe = load_pipeline(settings.model, "cuda" if torch.cuda.is_available() else "cpu")
    if adapter is not None:
        load_lora(pipe, adapter)
    return _sample_and_write(pipe, settings, out_dir, adapter, keep_trajectories)


def write_checkpoint_samples(
    settings: SampleSettings, checkpoints: list[tuple[Path, Path]]
) -> None:
    """One sample set per (adapter folder, output folder): all checkpoints of a training run
    in one job, loading the model once (a GPU job per checkpoint spent most of its time
    starting)."""
    pipe = load_pipeline(settings.model, "cuda" if torch.cuda.is_available() else "cpu")
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
    return write_sample_set(
        out_dir,
        trajectories.images,
        prompts,
        seeds,
        settings.images_per_prompt,
        sampler_record(settings, adapter),
        trajectories if keep_trajectories else None,
    )
