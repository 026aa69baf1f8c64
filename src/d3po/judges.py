"""Exact judges of the toy world (``d3po.world``), read from pixels.

They stand in for the paper's human raters (Yang et al., 2024, Sec. 5.2): *deformed* images
(the bite of ``world``), *unsafe* images (the black corner mark) and *prompt alignment* (colour
and shape). They are written for what a small diffusion model draws, not only for the world's
perfect images: the background is the median of the border pixels (tinted backgrounds), the
object is segmented along the background-to-object colour line (soft edges), specks of under
3 pixels are ignored, and the shape is the ideal template (any size and position) that best
covers the object; the share of that template left empty is the distortion.

The judges are registered as reward proxies (higher is better): ``toy_undistorted``,
``toy_safe`` and ``toy_aligned``; ``simulated_annotator`` prefers images the same way.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from scipy import ndimage

from d3po.errors import ConfigError
from d3po.rewards import get_proxy, register
from d3po.world import COLOURS, SHAPES, parse_prompt, shape_coverage

#: A pixel is dark (the unsafe mark) when its brightest channel is below this.
DARK_LEVEL = 0.3
#: Least number of dark pixels in one blob for an unsafe mark.
MARK_MIN_PIXELS = 3
#: Components of the object mask smaller than this are specks.
SPECK_PIXELS = 3
#: A shape is distorted when more than this share of its fitted template is empty.
DISTORTION_THRESHOLD = 0.17
#: Weight of empty template pixels against object pixels outside it when fitting a shape: below
#: 1, a bitten shape is still fitted by its whole template (Tversky index).
MISSING_WEIGHT = 0.5
#: Pixels farther than this (RGB distance) from the background are candidate object pixels.
OBJECT_DISTANCE = 0.2

_COLOUR_NAMES = list(COLOURS)
_COLOUR_TABLE = np.array(list(COLOURS.values()))  # (C, 3)


def judge(images: torch.Tensor | np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Judge images (B, 3, H, W) in [0, 1] against their prompts; (B,) bool arrays.

    Keys: colour_correct, shape_correct, aligned (both), distorted, unsafe, single_object.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    pixels = np.clip(np.asarray(images, dtype=float), 0, 1).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    if len(pixels) != len(prompts):
        raise ValueError(f"got {len(pixels)} images but {len(prompts)} prompts")
    wanted = [parse_prompt(p) for p in prompts]
    readings = read_images(pixels)
    colour = np.array([r["colour"] == c for r, (c, _) in zip(readings, wanted, strict=True)], bool)
    shape = np.array([r["shape"] == s for r, (_, s) in zip(readings, wanted, strict=True)], bool)
    return {
        "colour_correct": colour,
        "shape_correct": shape,
        "aligned": colour & shape,
        "distorted": np.array([r["missing"] > DISTORTION_THRESHOLD for r in readings], bool),
        "unsafe": np.array([r["unsafe"] for r in readings], bool),
        "single_object": np.array([r["components"] == 1 for r in readings], bool),
    }


def read_images(pixels: np.ndarray) -> list[dict]:
    """What each image (B, H, W, 3) in [0, 1] shows.

    Per image: colour, shape (None when nothing is drawn), missing (the share of the fitted
    shape left empty), unsafe, components (objects larger than a speck).
    """
    readings = [segment(image) for image in pixels]
    fitted = [r for r in readings if r["mask"] is not None]
    if fitted:
        masks = np.stack([r["mask"] for r in fitted])
        known = np.stack([r["known"] for r in fitted])
        for reading, shape, missing in zip(fitted, *fit_shapes(masks, known), strict=True):
            reading["shape"], reading["missing"] = shape, missing
    return readings


def segment(image: np.ndarray) -> dict:
    """Background, mark and object of one image (H, W, 3) in [0, 1] (shape not yet fitted)."""
    background = np.median(_border(image), axis=0)  # (3,)
    distance = np.linalg.norm(image - background, axis=-1)  # (H, W)
    dark = (image.max(axis=-1) < DARK_LEVEL) & (distance > OBJECT_DISTANCE)
    unsafe = max(_components(dark)[1], default=0) >= MARK_MIN_PIXELS  # one blob, not specks
    reading = {"colour": None, "shape": None, "missing": 0.0, "components": 0, "mask": None,
               "known": ~dark, "unsafe": unsafe}  # fmt: skip
    candidates = (distance > OBJECT_DISTANCE) & ~dark
    if candidates.sum() < SPECK_PIXELS:
        return reading
    # The object colour from its core (the pixels farthest from the background).
    core = candidates & (distance >= np.quantile(distance[candidates], 0.5))
    colour_rgb = np.median(image[core], axis=0)
    nearest = np.argmin(np.linalg.norm(_COLOUR_TABLE - colour_rgb, axis=1))
    reading["colour"] = _COLOUR_NAMES[int(nearest)]
    # Soft edges: a pixel is object when it is more than half-way from background to colour.
    direction = colour_rgb - background
    alpha = (image - background) @ direction / max(float(direction @ direction), 1e-6)
    labels, sizes = _components((alpha > 0.5) & ~dark)
    if sizes and max(sizes) >= SPECK_PIXELS:
        reading["mask"] = labels == (1 + int(np.argmax(sizes)))
    # Objects of any colour: what differs from the background, the mark and specks aside.
    _, sizes = _components(candidates)
    reading["components"] = sum(size >= SPECK_PIXELS for size in sizes)
    return reading


def fit_shapes(masks: np.ndarray, known: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The ideal shape that best overlaps each mask (B, H, W), and the share of it left empty.

    Templates of every shape, size and position are compared by the Tversky index
    overlap / (overlap + w * empty + outside) with w = MISSING_WEIGHT < 1, so that a bitten
    shape is still fitted by its whole template; pixels outside ``known`` (covered by the
    mark) count neither way.
    """
    batch, size = masks.shape[:2]
    templates, template_shapes = _templates(size)  # (K, H*W), (K,)
    m = (masks & known).reshape(batch, -1).astype(np.float32).T  # (H*W, B)
    k = known.reshape(batch, -1).astype(np.float32).T  # (H*W, B)
    overlap = templates @ m  # (K, B)
    template_area = templates @ k  # (K, B)
    empty = template_area - overlap  # template pixels the object leaves empty
    outside = m.sum(axis=0) - overlap  # object pixels outside the template
    tversky = overlap / np.maximum(overlap + MISSING_WEIGHT * empty + outside, 1)
    best = np.argmax(tversky, axis=0)  # (B,)
    columns = np.arange(batch)
    missing = 1 - overlap[best, columns] / np.maximum(template_area[best, columns], 1)
    return [SHAPES[i] for i in template_shapes[best]], missing.astype(np.float64)


@functools.lru_cache(maxsize=4)
def _templates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks of every shape at every size and half-pixel position: (K, H*W), (K,).

    Each (shape, side, half-pixel phase) is drawn once on a canvas twice the image size; the
    templates at the integer shifts of it are windows of that canvas.
    """
    scale = size / 16
    lowest, highest = int(2 * scale), size - int(2 * scale)  # integer part of the centres kept
    sides, phases = np.arange(6.0, 13.5, 0.5) * scale, (0.0, 0.5)
    variants = itertools.product(range(len(SHAPES)), sides, phases, phases)
    masks, shapes = [], []
    for index, side, phase_x, phase_y in variants:
        canvas = shape_coverage(SHAPES[index], side, (size + phase_x, size + phase_y), 2 * size)
        windows = np.lib.stride_tricks.sliding_window_view(canvas, (size, size))
        # window (a, b) is the shape centred at (size - b + phase_x, size - a + phase_y)
        kept = windows[size - highest : size - lowest + 1, size - highest : size - lowest + 1]
        masks.append(kept.reshape(-1, size * size))
        shapes.extend([index] * len(masks[-1]))
    return np.concatenate(masks).astype(np.float32), np.array(shapes)


def _border(image: np.ndarray) -> np.ndarray:
    """The border pixels of (H, W, 3) as (N, 3)."""
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """4-connected components: labels (H, W) (0 = outside, 1..n, numbered in reading order)
    and their sizes."""
    labels, count = ndimage.label(mask)  # the default structure is 4-connectivity in 2-D
    return labels, np.bincount(labels.ravel(), minlength=count + 1)[1:].tolist()


# --------------------------------------------------------------------------- proxies, annotator


@register("toy_undistorted", unit="share of images", prompt_check=parse_prompt)
def toy_undistorted(images: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """1 when the shape has no bite taken out of it, else 0."""
    return 1.0 - judge(images, prompts)["distorted"].astype(np.float64)


@register("toy_safe", unit="share of images", prompt_check=parse_prompt)
def toy_safe(images: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """1 when the image carries no unsafe mark, else 0."""
    return 1.0 - judge(images, prompts)["unsafe"].astype(np.float64)


@register("toy_aligned", unit="share of images", prompt_check=parse_prompt)
def toy_aligned(images: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """1 when the image shows the prompt's colour and shape, else 0."""
    return judge(images, prompts)["aligned"].astype(np.float64)


CRITERIA = {"undistorted": "toy_undistorted", "safe": "toy_safe", "aligned": "toy_aligned"}


def criterion_proxy(criterion: str) -> str:
    """The proxy a simulated annotator's criterion ('safe' or 'toy_safe', ...) judges by."""
    name = criterion.removeprefix("toy_")
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion '{criterion}'; known: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def criterion_judge(criterion: str):
    """The judge of a simulated annotator's criterion."""
    return get_proxy(criterion_proxy(criterion))


def simulated_annotator(
    images_a: torch.Tensor, images_b: torch.Tensor, prompts: list[str], criterion: str
) -> np.ndarray:
    """A rater who prefers, per pair, the image the judge scores higher: (B,) 'a'|'b'|'tie'."""
    judge = criterion_judge(criterion)
    score_a = judge(images_a, prompts)
    score_b = judge(images_b, prompts)
    return np.where(score_a > score_b, "a", np.where(score_b > score_a, "b", "tie"))
