"""A procedural captioned image world in which the paper's human-feedback tasks are exact.

Prompts are "a {colour} {shape}" (6 colours x 4 shapes). Each image is one anti-aliased shape
of random size and position on a muted background. Two controlled defects stand in for the
paper's human-feedback experiments (Sec. 5.2 of Yang et al., 2024):

- *distorted* (the "deformed hands" task): a background-coloured disc bites 25-33 % out of the
  shape at a random point of its edge;
- *unsafe* (the "safety" task): a 3x3 black mark in one corner of the image (one pixel in from
  the border, so the border stays background).

A model pretrained on this world reproduces both defects at about their training rates, and
``d3po.judges`` detects colour, shape, distortion and the mark from pixels, so every experiment
can be judged exactly instead of by human raters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d3po.errors import ConfigError

#: Saturated object colours (RGB in [0, 1]); every name is one token of the toy tokenizer.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.10, 0.75),
    "orange": (1.00, 0.55, 0.00),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Muted, low-saturation backgrounds, far from every object colour and from the black mark.
BACKGROUNDS: tuple[tuple[float, float, float], ...] = (
    (0.55, 0.55, 0.55),
    (0.70, 0.68, 0.62),
    (0.62, 0.66, 0.70),
    (0.48, 0.50, 0.47),
    (0.75, 0.74, 0.74),
)
MARK_COLOUR = (0.0, 0.0, 0.0)
MARK_SIZE = 3
PROMPTS: tuple[str, ...] = tuple(f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES)
#: Arm width of the cross relative to its size.
CROSS_ARM = 0.4
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Metadata:
    """Ground truth of one rendered image."""

    colour: str
    shape: str
    distorted: bool
    unsafe: bool
    size: float  # side of the shape's bounding box, in pixels
    centre: tuple[float, float]  # (x, y) of the bounding box centre, in pixels
    bite_fraction: float  # share of the shape's area the bite removed (0 when not distorted)
    mark_corner: int  # 0-3 (top-left, top-right, bottom-left, bottom-right), -1 when safe


def parse_prompt(prompt: str) -> tuple[str, str]:
    """'a red circle' -> ('red', 'circle'); a word outside the world raises ValueError."""
    words = prompt.lower().split()
    if words and words[0] in ("a", "an"):
        words = words[1:]
    for word in words:
        if word not in COLOURS and word not in SHAPES:
            raise ConfigError(_unknown(f"unknown word '{word}'", prompt))
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
        raise ConfigError(_unknown("expected 'a {colour} {shape}'", prompt))
    return words[0], words[1]


def _unknown(problem: str, prompt: str) -> str:
    return (
        f"{problem} in prompt '{prompt}'; known colours: {', '.join(COLOURS)}; "
        f"known shapes: {', '.join(SHAPES)}"
    )


def shape_coverage(
    shape: str, size: float, centre: tuple[float, float], image_size: int
) -> np.ndarray:
    """The ideal shape sampled at pixel centres: a binary mask (H, W) as float64 0/1."""
    coords = np.arange(image_size) + 0.5
    x, y = np.meshgrid(coords - centre[0], coords - centre[1])  # (H, W), relative to centre
    half = size / 2
    if shape == "circle":
        inside = x**2 + y**2 <= half**2
    elif shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":  # apex up: half-width grows linearly from the top edge
        depth = (y + half) / size  # 0 at the apex, 1 at the base
        inside = (depth >= 0) & (depth <= 1) & (np.abs(x) <= depth * half)
    elif shape == "cross":
        arm = CROSS_ARM * half
        in_box = (np.abs(x) <= half) & (np.abs(y) <= half)
        inside = in_box & ((np.abs(x) <= arm) | (np.abs(y) <= arm))
    else:
        raise ValueError(f"unknown shape '{shape}'; known shapes: {', '.join(SHAPES)}")
    return inside.astype(np.float64)


def _bite(shape_mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Remove a disc centred on a random edge point, growing it until 25-33 % is gone.

    ``shape_mask`` is the supersampled binary mask; returns (bitten mask, removed fraction).
    """
    from scipy import ndimage  # imported here: the workflow imports this module to parse prompts

    # the edge: shape pixels with a 4-neighbour outside the shape
    edge_y, edge_x = np.nonzero(shape_mask & ~ndimage.binary_erosion(shape_mask))
    pick = rng.integers(len(edge_y))
    yy, xx = np.indices(shape_mask.shape)
    distance = np.hypot(yy - edge_y[pick], xx - edge_x[pick])
    target = rng.uniform(0.25, 0.33)
    area = shape_mask.sum()
    for radius in np.arange(1.0, shape_mask.shape[0], 0.5):
        bitten = shape_mask & (distance > radius)
        removed = 1 - bitten.sum() / area
        if removed >= target:
            break
    return bitten, float(removed)


def render(
    prompt: str | tuple[str, str],
    rng: np.random.Generator,
    distorted: bool = False,
    unsafe: bool = False,
    size: int = 16,
) -> tuple[np.ndarray, Metadata]:
    """Draw one image of the prompt: (H, W, 3) float RGB in [0, 1], and its ground truth."""
    colour, shape = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    scale = size / 16
    shape_size = rng.uniform(8.0, 11.5) * scale
    low, high = shape_size / 2 + scale, size - shape_size / 2 - scale
    centre = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    background = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    background = np.clip(background + rng.uniform(-0.04, 0.04, 3), 0, 1)

    # The shape on a grid 4x finer (binary), so that the bite and the edges anti-alias.
    fine_centre = (centre[0] * _SUPERSAMPLE, centre[1] * _SUPERSAMPLE)
    fine = shape_coverage(shape, shape_size * _SUPERSAMPLE, fine_centre, size * _SUPERSAMPLE) > 0
    bite_fraction = 0.0
    if distorted:
        fine, bite_fraction = _bite(fine, rng)
    coverage = fine.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    image = (1 - coverage) * background + coverage * np.array(COLOURS[colour])

    corner = -1
    if unsafe:
        corner = int(rng.integers(4))
        m = int(round(MARK_SIZE * scale))
        top = 1 if corner < 2 else size - 1 - m
        left = 1 if corner % 2 == 0 else size - 1 - m
        image[top : top + m, left : left + m] = MARK_COLOUR
    meta = Metadata(colour, shape, distorted, unsafe, shape_size, centre, bite_fraction, corner)
    return image.astype(np.float32), meta


def sample_dataset(
    n: int,
    seed: int,
    distortion_rate: float = 0.35,
    unsafe_rate: float = 0.3,
    size: int = 16,
) -> tuple[torch.Tensor, list[str], list[Metadata]]:
    """``n`` images with uniformly drawn prompts and defects drawn at the given rates.

    Returns images (N, 3, H, W) float32 in [-1, 1], their prompts, and their ground truth.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.float32)
    chosen, labels = [], []
    for i in range(n):
        prompt = PROMPTS[rng.integers(len(PROMPTS))]
        distorted = bool(rng.random() < distortion_rate)
        unsafe = bool(rng.random() < unsafe_rate)
        images[i], meta = render(prompt, rng, distorted, unsafe, size)
        chosen.append(prompt)
        labels.append(meta)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return tensor * 2 - 1, chosen, labels
