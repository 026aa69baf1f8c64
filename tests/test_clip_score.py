"""The CLIP-score proxy rule's script (workflow/proxies/scripts/clip_score.py) on a tiny random
open_clip model built by the test: a score table the workflow's check accepts."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from d3po.scores import read_scores

SCRIPT = Path(__file__).resolve().parents[1] / "workflow/proxies/scripts/clip_score.py"


@pytest.fixture(scope="module")
def clip_score():
    """The script as a module; it sets HF_HUB_OFFLINE for its process, undone for the others."""
    before = os.environ.get("HF_HUB_OFFLINE")
    spec = importlib.util.spec_from_file_location("clip_score", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if before is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = before


@pytest.fixture
def sample_set(tmp_path: Path) -> Path:
    """Two prompts x two plain images, with the manifest a sample set has."""
    folder = tmp_path / "samples"
    folder.mkdir()
    rows = []
    images = [("a red circle", "red"), ("a red circle", "blue")]
    images += [("a blue square", "blue"), ("a blue square", "green")]
    for index, (prompt, colour) in enumerate(images):
        name = f"{index // 2:04d}_{index % 2:02d}"
        Image.new("RGB", (16, 16), colour).save(folder / f"{name}.png")
        rows.append(
            {"id": name, "prompt": prompt, "group": index // 2, "seed": 0, "path": f"{name}.png"}
        )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_every_image_gets_a_cosine_similarity(clip_score, sample_set, tiny_clip_dir, tmp_path):
    out = tmp_path / "scores" / "clip_score.csv"
    clip_score.main(
        ["--samples", str(sample_set), "--out", str(out), f"--model=local-dir:{tiny_clip_dir}"]
    )
    ids = list(pd.read_csv(sample_set / "manifest.csv", dtype={"id": str})["id"])
    table = read_scores(out, "clip_score", ids)
    assert list(table["id"]) == ids
    assert table["value"].between(-1, 1).all()
    assert table["value"].nunique() == len(ids)  # different images, different scores
    again = tmp_path / "again.csv"
    clip_score.main(
        ["--samples", str(sample_set), "--out", str(again), "--model", f"local-dir:{tiny_clip_dir}"]
    )
    assert pd.read_csv(again)["value"].tolist() == pytest.approx(table["value"].tolist())


def test_random_weights_are_refused(clip_score, sample_set, tiny_clip_dir, tmp_path):
    no_weights = tmp_path / "config_only"
    no_weights.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", no_weights)
    with pytest.raises(SystemExit, match="cannot load open_clip model"):
        clip_score.main(
            [
                "--samples",
                str(sample_set),
                "--out",
                str(tmp_path / "x.csv"),
                "--model",
                f"local-dir:{no_weights}",
            ]
        )
    assert not (tmp_path / "x.csv").exists()


def test_a_tag_not_in_the_cache_is_not_downloaded(clip_score, sample_set, tmp_path):
    with pytest.raises(SystemExit, match="from disk"):
        clip_score.main(
            [
                "--samples",
                str(sample_set),
                "--out",
                str(tmp_path / "x.csv"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
