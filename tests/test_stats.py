"""Confidence intervals against hand-computed values."""

import math

import numpy as np
import pytest

from d3po.stats import mean_interval, wilson_interval


def test_wilson_interval_matches_the_formula():
    # 8 successes in 10: centre (0.8 + z^2/20) / (1 + z^2/10), as in Wilson (1927)
    z = 1.959964
    centre = (0.8 + z**2 / 20) / (1 + z**2 / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z**2 / 400) / (1 + z**2 / 10)
    assert wilson_interval(0.8, 10) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(1.0, 50)[1] == pytest.approx(1.0) and wilson_interval(1.0, 50)[0] < 0.95


def test_binary_values_get_a_wilson_interval_and_others_a_normal_one():
    flags = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=float)
    assert mean_interval(flags) == pytest.approx(wilson_interval(0.8, 10))
    values = np.array([1.0, 2.0, 3.0, 4.0])
    half = 1.959964 * values.std(ddof=1) / 2
    assert mean_interval(values) == pytest.approx((2.5 - half, 2.5 + half))
