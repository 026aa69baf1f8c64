"""The toy-world judges: accuracy on fresh ground truth, robustness, proxies, annotator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d3po.judges import judge, simulated_annotator
from d3po.world import render, sample_dataset


@pytest.fixture(scope="module")
def ground_truth():
    images, prompts, labels = sample_dataset(300, seed=2024)  # seeds unused in calibration
    return (images + 1) / 2, prompts, labels


def test_accuracy_on_ground_truth(ground_truth):
    images, prompts, labels = ground_truth
    verdicts = judge(images, prompts)
    distorted = np.array([m.distorted for m in labels])
    unsafe = np.array([m.unsafe for m in labels])
    assert verdicts["colour_correct"].mean() >= 0.98
    assert verdicts["shape_correct"].mean() >= 0.95
    assert verdicts["shape_correct"][~distorted].mean() >= 0.97
    assert (verdicts["distorted"] == distorted).mean() >= 0.95
    assert (verdicts["unsafe"] == unsafe).mean() >= 0.98
    assert verdicts["single_object"].mean() >= 0.97
    assert np.array_equal(
        verdicts["aligned"], verdicts["colour_correct"] & verdicts["shape_correct"]
    )


def _image(prompt, seed, distorted=False, unsafe=False):
    image, _ = render(prompt, np.random.default_rng(seed), distorted, unsafe)
    return image


def _judge_one(image, prompt):
    tensor = torch.from_numpy(np.clip(image, 0, 1)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return {name: bool(flags[0]) for name, flags in judge(tensor, [prompt]).items()}


def _blur(image):
    """A 3x3 box blur (edge-padded): the soft edges a diffusion model draws."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[dy : dy + 16, dx : dx + 16] for dy in range(3) for dx in range(3)) / 9


@pytest.mark.parametrize(
    "prompt", ["a red circle", "a green square", "a blue triangle", "a purple cross"]
)
def test_tricky_images(prompt):
    clean = _image(prompt, 7)
    tinted = clean * 0.9 + np.array([0.08, 0.02, 0.0])  # tinted, darker picture
    soft = 0.5 * clean + 0.5 * _blur(clean)
    specked = clean.copy()
    specked[0, 8] = [1.0, 1.0, 1.0]  # one stray pixel (on the border, too)
    noisy = clean + np.random.default_rng(0).normal(0, 0.03, clean.shape)
    for image in (clean, tinted, soft, specked, noisy):
        verdict = _judge_one(image, prompt)
        assert verdict["aligned"] and verdict["single_object"], verdict
        assert not verdict["distorted"] and not verdict["unsafe"], verdict


def test_defects_survive_soft_edges():
    for seed in range(4):
        image = _image("a yellow square", seed, distorted=True, unsafe=True)
        verdict = _judge_one(0.5 * image + 0.5 * _blur(image), "a yellow square")
        assert verdict["distorted"] and verdict["unsafe"], (seed, verdict)


def test_empty_image_is_not_aligned():
    verdict = _judge_one(np.full((16, 16, 3), 0.6), "a red circle")
    assert not verdict["aligned"] and not verdict["single_object"]


def test_two_objects_are_not_single():
    image = _image("a red circle", 0)
    image[12:15, 12:15] = [0.1, 0.25, 0.95]  # a blue square away from the circle
    assert not _judge_one(image, "a red circle")["single_object"]


def test_proxies_are_registered():
    from d3po.rewards import get_proxy

    images, prompts, labels = sample_dataset(40, seed=99)
    images = (images + 1) / 2
    verdicts = judge(images, prompts)
    scores = get_proxy("toy_undistorted")(images, prompts)
    assert scores.dtype == np.float64 and scores.shape == (40,)
    np.testing.assert_array_equal(scores, 1 - verdicts["distorted"])
    np.testing.assert_array_equal(get_proxy("toy_safe")(images, prompts), 1 - verdicts["unsafe"])
    np.testing.assert_array_equal(get_proxy("toy_aligned")(images, prompts), verdicts["aligned"])


def test_simulated_annotator():
    images, prompts, labels = sample_dataset(60, seed=5)
    images = (images + 1) / 2
    a, b = images[:30], images[30:]
    pair_prompts = prompts[:30]  # judged against the same prompt; the criterion ignores it
    choices = simulated_annotator(a, b, pair_prompts, "safe")
    unsafe_a = judge(a, pair_prompts)["unsafe"]
    unsafe_b = judge(b, pair_prompts)["unsafe"]
    expected = np.where(unsafe_a == unsafe_b, "tie", np.where(unsafe_b, "a", "b"))
    np.testing.assert_array_equal(choices, expected)
    assert (simulated_annotator(a, a, pair_prompts, "toy_undistorted") == "tie").all()
    with pytest.raises(ValueError, match="aligned"):
        simulated_annotator(a, b, pair_prompts, "pretty")


def test_components_are_four_connected_and_numbered_in_reading_order():
    from d3po.judges import _components

    mask = np.array(
        [
            [0, 1, 0, 0],
            [1, 0, 0, 1],
            [1, 0, 1, 1],
        ],
        dtype=bool,
    )  # diagonal neighbours are separate objects
    labels, sizes = _components(mask)
    assert sizes == [1, 2, 3]
    assert labels.tolist() == [[0, 1, 0, 0], [2, 0, 0, 3], [2, 0, 3, 3]]
