"""The toy world: prompts, rendering of the two defects, datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d3po.models import build_tokenizer
from d3po.world import COLOURS, PROMPTS, SHAPES, parse_prompt, render, sample_dataset


def test_prompts_tokenize_distinctly_within_max_length():
    tokenizer = build_tokenizer()
    ids = {tuple(tokenizer(prompt).input_ids) for prompt in PROMPTS}
    assert len(ids) == len(PROMPTS) == len(COLOURS) * len(SHAPES)
    assert max(len(i) for i in ids) <= tokenizer.model_max_length
    assert len(tokenizer("red").input_ids) == 3  # <start> red <end>: a known word is one token


def test_parse_prompt():
    assert parse_prompt("a red circle") == ("red", "circle")
    assert parse_prompt("an orange cross") == ("orange", "cross")


def test_unknown_word_lists_the_vocabulary():
    with pytest.raises(ValueError, match="unknown word 'magenta'") as error:
        parse_prompt("a magenta circle")
    message = str(error.value)
    assert "'a magenta circle'" in message
    assert all(word in message for word in [*COLOURS, *SHAPES])
    with pytest.raises(ValueError, match="known shapes"):
        parse_prompt("a red")


def test_render_clean_image():
    image, meta = render("a blue square", np.random.default_rng(0))
    assert image.shape == (16, 16, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    assert (meta.colour, meta.shape, meta.distorted, meta.unsafe) == (
        "blue",
        "square",
        False,
        False,
    )
    # Some pixels are exactly the object colour, the border is background.
    assert np.isclose(image, COLOURS["blue"], atol=1e-6).all(axis=-1).any()
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert np.ptp(border, axis=0).max() < 1e-6


def test_render_defects():
    rng = np.random.default_rng(1)
    for _ in range(10):
        image, meta = render(("red", "circle"), rng, distorted=True, unsafe=True)
        assert 0.25 <= meta.bite_fraction <= 0.4
        top = 1 if meta.mark_corner < 2 else 12
        left = 1 if meta.mark_corner % 2 == 0 else 12
        assert (image[top : top + 3, left : left + 3] == 0).all()


def test_sample_dataset_rates_and_determinism():
    images, prompts, labels = sample_dataset(400, seed=3, distortion_rate=0.35, unsafe_rate=0.3)
    assert images.shape == (400, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert set(prompts) <= set(PROMPTS)
    assert abs(np.mean([m.distorted for m in labels]) - 0.35) < 0.08
    assert abs(np.mean([m.unsafe for m in labels]) - 0.3) < 0.08
    again, _, _ = sample_dataset(400, seed=3)
    assert torch.equal(images, again)
    assert sample_dataset(8, seed=0, size=24)[0].shape == (8, 3, 24, 24)
