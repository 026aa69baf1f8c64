"""Shared fixtures: the embedded tiny model, built once per test session."""

from __future__ import annotations

import warnings

import pytest
import torch

from d3po.config import SamplerSpec

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The tiny-random pipeline with DDIM, frozen, on the CPU (do not add adapters to it)."""
    from d3po.models import ModelSpec, load_pipeline

    torch.set_num_threads(2)
    return load_pipeline(ModelSpec(source="tiny-random", seed=0))


@pytest.fixture
def fresh_pipe():
    """A tiny-random pipeline a test may modify (adapters, weights)."""
    from d3po.models import ModelSpec, load_pipeline

    return load_pipeline(ModelSpec(source="tiny-random", seed=0))


@pytest.fixture
def sampler() -> SamplerSpec:
    return SamplerSpec(num_steps=4, eta=1.0, guidance_scale=3.0, images_per_call=16)


#: A tiny random open_clip model's configuration (open_clip's `model_cfg`): real CLIP weights
#: cannot be downloaded here.
TINY_CLIP_MODEL_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random open_clip model saved as an open_clip folder (config + weights), the form
    `local-dir:FOLDER` loads; real CLIP weights cannot be downloaded here."""
    import json

    import open_clip

    config = TINY_CLIP_MODEL_CONFIG
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**config)
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
