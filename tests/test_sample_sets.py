"""The sample-set format (d3po.sample_sets, d3po.atomic) and sampling checkpoints into sets:
one job for every checkpoint of a run gives the same sets as one job each."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from d3po.atomic import write_atomically
from d3po.config import SamplerSpec, SampleSettings, TrainingSpec, TrainSettings
from d3po.models import ModelSpec
from d3po.sample_checkpoints import write_checkpoint_samples, write_samples
from d3po.sample_sets import (
    MANIFEST_COLUMNS,
    read_manifest,
    read_sampler_record,
    read_set_images,
    read_trajectories,
    to_pil,
    write_sample_set,
)
from d3po.train import train

PROMPTS = ("a red circle", "a blue square")
SAMPLER = SamplerSpec(num_steps=3, eta=1.0, guidance_scale=2.0, images_per_call=16)


def pixels(sample_set) -> list[np.ndarray]:
    manifest = pd.read_csv(sample_set / "manifest.csv")
    return [np.asarray(Image.open(sample_set / path)) for path in manifest["path"]]


def test_sampling_all_checkpoints_at_once_equals_one_job_each(tmp_path):
    run_settings = TrainSettings(
        method="d3po",
        prompts=PROMPTS,
        objectives=("jpeg_compressibility",),
        model=ModelSpec(source="tiny-random"),
        sampler=SAMPLER,
        training=TrainingSpec(
            epochs=2, checkpoint_every=1, prompts_per_epoch=2, images_per_prompt=2,
            learning_rate=1e-2,
        ),
    )  # fmt: skip
    train(run_settings, tmp_path / "run", tmp_path / "state")
    settings = SampleSettings(
        prompts=PROMPTS, images_per_prompt=2, model=ModelSpec(source="tiny-random"), sampler=SAMPLER
    )
    adapters = [tmp_path / "run" / "checkpoints" / f"epoch_000{e}" for e in (1, 2)]
    write_checkpoint_samples(
        settings, [(adapter, tmp_path / "together" / adapter.name) for adapter in adapters]
    )
    for adapter in adapters:
        write_samples(settings, tmp_path / "apart" / adapter.name, adapter=adapter)
        together = pixels(tmp_path / "together" / adapter.name)
        apart = pixels(tmp_path / "apart" / adapter.name)
        assert all(np.array_equal(a, b) for a, b in zip(together, apart, strict=True))
    # the adapters differ, so the sets must too (else the test would prove nothing)
    first, second = (pixels(tmp_path / "together" / a.name) for a in adapters)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_images_are_rounded_to_the_nearest_level_and_clamped():
    images = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(1)) * 1.4 - 0.2
    images[0, 0, 0, :3] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255])  # ties: to even
    expected = (images.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().numpy()
    got = np.stack([np.asarray(image) for image in to_pil(images)])
    assert got.dtype == np.uint8 and got.shape == (3, 5, 7, 3)
    np.testing.assert_array_equal(got, expected)


def test_a_written_set_reads_back_with_its_images_and_record(tmp_path):
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    record = {"sampler": None, "model": "test", "adapter": None}
    written = write_sample_set(tmp_path / "set", images, ["a cat", "a dog"], [7, 9], 2, record)
    manifest = read_manifest(tmp_path / "set")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert list(manifest["id"]) == ["0000_00", "0000_01", "0001_00", "0001_01"]
    assert list(manifest["prompt"]) == ["a cat", "a cat", "a dog", "a dog"]
    assert list(manifest["group"]) == [0, 0, 1, 1] and list(manifest["seed"]) == [7, 7, 9, 9]
    pd.testing.assert_frame_equal(manifest, written, check_dtype=False)
    pixels = read_set_images(tmp_path / "set", manifest)
    torch.testing.assert_close(pixels, (images * 255).round() / 255, atol=0, rtol=0)
    assert read_sampler_record(tmp_path / "set") == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging folder left
    with pytest.raises(FileNotFoundError, match="trajectories.pt is missing"):
        read_trajectories(tmp_path / "set", manifest)


def test_a_set_that_fails_while_written_leaves_the_old_set_whole(tmp_path):
    record = {"sampler": None}
    write_sample_set(tmp_path / "set", torch.rand(2, 3, 4, 4), ["a cat"], [1], 2, record)
    with pytest.raises(IndexError):  # 4 images, 2 per prompt, but one prompt
        write_sample_set(tmp_path / "set", torch.rand(4, 3, 4, 4), ["a dog"], [2], 2, record)
    assert list(read_manifest(tmp_path / "set")["prompt"]) == ["a cat", "a cat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_broken_sampler_record_names_the_file(tmp_path):
    write_sample_set(tmp_path / "set", torch.rand(1, 3, 4, 4), ["a"], [0], 1, {})
    (tmp_path / "set" / "sampler.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"sampler.json: not JSON"):
        read_sampler_record(tmp_path / "set")


def test_files_are_written_atomically_as_text_or_csv(tmp_path):
    write_atomically("# table\n", tmp_path / "deep" / "table.md")
    write_atomically(pd.DataFrame({"id": ["a"], "value": [1.5]}), tmp_path / "deep" / "t.csv")
    assert (tmp_path / "deep" / "table.md").read_text() == "# table\n"
    assert (tmp_path / "deep" / "t.csv").read_text() == "id,value\na,1.5\n"
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["t.csv", "table.md"]


def test_scoring_a_set_does_not_import_diffusers():
    """Each score job would pay diffusers' import (about 4 s) for nothing."""
    code = (
        "import sys, d3po.rewards, d3po.judges, d3po.sample_sets; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'statsmodels')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
