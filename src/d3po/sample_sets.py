"""The sample-set format, written, read and checked here only (docs/design.md, "Files"):

    DIR/manifest.csv     id, prompt, group (images of one prompt and initial noise), seed, path
    DIR/GGGG_KK.png      image KK of group GGGG (path relative to DIR)
    DIR/sampler.json     how the set was sampled: {sampler, log_prob_reduction, model, adapter}
    DIR/trajectories.pt  optional: every step's latents, log-probs, ... (sampling.Trajectories)

A set is written atomically (a killed job leaves none). Scoring a set needs only this module,
torch, numpy and PIL: diffusers (about 4 s to import, paid by each of a workflow's score jobs)
is imported only to read or write trajectories.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image

from d3po.atomic import folder_atomically
from d3po.config import SampleSettings
from d3po.errors import InputFileError, MissingFileError

if TYPE_CHECKING:
    from d3po.sampling import Trajectories

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("id", "prompt", "group", "seed", "path")
SAMPLER_RECORD = "sampler.json"
TRAJECTORIES = "trajectories.pt"


# --------------------------------------------------------------------------- images


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float images (B, 3, H, W) in [0, 1] -> 8-bit RGB images, rounding to nearest."""
    # VaeImageProcessor.pt_to_numpy + numpy_to_pil, the same arithmetic, without diffusers' import.
    pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round()
    return [Image.fromarray(image) for image in pixels.astype(np.uint8)]


def read_set_images(samples_dir: Path, manifest: pd.DataFrame) -> torch.Tensor:
    """The images of ``manifest``'s rows, in its order: float tensor (B, 3, H, W) in [0, 1]."""
    # VaeImageProcessor.pil_to_numpy + numpy_to_pt, the same arithmetic, without diffusers' import.
    paths = [Path(samples_dir) / path for path in manifest["path"]]
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- writing


def sampler_record(settings: SampleSettings, adapter: Path | None) -> dict:
    """What ``sampler.json`` holds: the sampling policy's settings and the adapter, if any.

    ``log_prob_reduction`` is the reduction of the log-probs kept in ``trajectories.pt``
    (``sampling.sample``'s default), which a later round uses as its reference policy.
    """
    return {
        "sampler": dataclasses.asdict(settings.sampler),
        "log_prob_reduction": "mean",
        "model": settings.model.source,
        "adapter": None if adapter is None else str(adapter),
    }


def write_sample_set(
    out_dir: Path,
    images: torch.Tensor,
    prompts: list[str],
    seeds: list[int],
    images_per_prompt: int,
    record: dict,
    trajectories: Trajectories | None = None,
) -> pd.DataFrame:
    """Write a set: images (B, 3, H, W) in [0, 1], ``images_per_prompt`` consecutive images per
    prompt (one group each, with its seed), ``record`` as sampler.json, and optionally the
    trajectories. The folder appears complete or not at all. Returns the manifest."""
    rows = []
    with folder_atomically(Path(out_dir)) as staging:
        for index, image in enumerate(to_pil(images)):
            group = index // images_per_prompt
            name = f"{group:04d}_{index % images_per_prompt:02d}.png"
            image.save(staging / name)
            rows.append((name.removesuffix(".png"), prompts[group], group, seeds[group], name))
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        manifest.to_csv(staging / MANIFEST, index=False)
        (staging / SAMPLER_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if trajectories is not None:
            from d3po.sampling import save_trajectories

            save_trajectories(trajectories, staging / TRAJECTORIES)
    return manifest


# --------------------------------------------------------------------------- reading


def read_manifest(samples_dir: Path) -> pd.DataFrame:
    """Read ``samples_dir/manifest.csv``, checking its columns and that every image exists."""
    manifest_path = Path(samples_dir) / MANIFEST
    if not manifest_path.is_file():
        raise MissingFileError(f"sample manifest not found: {manifest_path}")
    manifest = pd.read_csv(manifest_path, dtype={"id": str, "prompt": str, "path": str})
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise InputFileError(
            f"{manifest_path}: missing columns {missing}; need {list(MANIFEST_COLUMNS)}"
        )
    for row, relative in enumerate(manifest["path"], start=2):  # line 1 is the header
        if not (Path(samples_dir) / relative).is_file():
            raise MissingFileError(
                f"{manifest_path} line {row}: image not found: {Path(samples_dir) / relative}"
            )
    return manifest


def read_sampler_record(samples_dir: Path) -> dict:
    """``sampler.json`` of a set: how it was sampled (see :func:`sampler_record`)."""
    path = Path(samples_dir) / SAMPLER_RECORD
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing: the set does not say which sampler made it; sample it again "
            "with `d3po sample --trajectories`"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputFileError(f"{path}: not JSON ({error})") from error


def read_trajectories(samples_dir: Path, manifest: pd.DataFrame) -> Trajectories:
    """``trajectories.pt`` of a set, checked to hold one trajectory per manifest row."""
    from d3po.sampling import load_trajectories

    trajectories = load_trajectories(Path(samples_dir) / TRAJECTORIES)
    if len(trajectories.prompts) != len(manifest):
        raise InputFileError(
            f"{samples_dir}: {MANIFEST} lists {len(manifest)} images but {TRAJECTORIES} holds "
            f"{len(trajectories.prompts)}; sample the set again with --trajectories"
        )
    return trajectories
