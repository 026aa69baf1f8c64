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
    return SamplerSpec(num_steps=4, eta=1.0, guidance_scale=3.0, batch_size=16)
