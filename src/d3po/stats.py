"""95 % confidence intervals for evaluation tables: Wilson for rates, normal for means."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``rate`` observed over ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """95 % interval of the mean: Wilson when every value is 0 or 1 (a rate), else normal."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if np.isin(values, (0.0, 1.0)).all():
        return wilson_interval(float(values.mean()), values.size, z)
    half = z * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean() - half), float(values.mean() + half)
