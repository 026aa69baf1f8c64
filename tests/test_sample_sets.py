"""One job samples every checkpoint of a run (one model load): the same sets as one job each."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from d3po.config import SamplerSpec, SampleSettings, TrainingSpec, TrainSettings
from d3po.evaluate import write_checkpoint_samples, write_samples
from d3po.models import ModelSpec
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
