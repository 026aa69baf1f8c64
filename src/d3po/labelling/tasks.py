"""What an annotator is asked about: one task per group (prompt) of a sample set.

A task shows the images of one group, which share one prompt and one initial noise: all K of
them for the ``best`` and ``score`` protocols, and one pair of them for ``pairwise`` (drawn
once per group, seeded by the group number, so that every annotator of the prompt judges the
same pair and their votes can be compared).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from d3po.errors import ConfigError, InputFileError
from d3po.preferences import PROTOCOLS
from d3po.sample_sets import read_manifest


@dataclass(frozen=True)
class Task:
    key: str  # "g0007": the group number, the only task id a client may send
    group: int
    prompt: str
    images: tuple[str, ...]


@dataclass(frozen=True)
class SampleSet:
    """A sample set as the app sees it: tasks, and image files by id (from the manifest)."""

    manifest: pd.DataFrame
    tasks: dict[str, Task]
    files: dict[str, Path]  # image id -> file inside the set's folder
    group_of: dict[str, str]  # image id -> task key


def task_key(group: int) -> str:
    return f"g{int(group):04d}"


def load_sample_set(samples_dir: Path, protocol: str) -> SampleSet:
    """Read the manifest (``sample_sets.read_manifest``) and build the tasks of ``protocol``.

    Every image path must stay inside the folder (no ``..`` or absolute paths), so that
    serving an image by id can never reach another file.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    root = Path(samples_dir).resolve()
    manifest = read_manifest(root)
    manifest["id"] = manifest["id"].astype(str)
    files = {}
    for row, (image_id, relative) in enumerate(
        zip(manifest["id"], manifest["path"], strict=True), start=2
    ):
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise InputFileError(
                f"{root / 'manifest.csv'} line {row}: path {relative!r} leaves {root}"
            )
        files[image_id] = path
    tasks = {}
    for group, rows in manifest.groupby("group", sort=True):
        images = tuple(rows["id"])
        if len(images) < 2:
            continue  # nothing to compare
        if protocol == "pairwise":
            chosen = np.random.default_rng(int(group)).choice(len(images), 2, replace=False)
            images = tuple(images[i] for i in chosen)
        key = task_key(group)
        tasks[key] = Task(key, int(group), str(rows["prompt"].iloc[0]), images)
    group_of = dict(zip(manifest["id"], manifest["group"].map(task_key), strict=True))
    return SampleSet(manifest, tasks, files, group_of)
