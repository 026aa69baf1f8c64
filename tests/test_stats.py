"""Confidence intervals against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from d3po.stats import mean_interval, paired_comparison, wilson_interval


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


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    # 9 images turned acceptable, 2 turned unacceptable, 20 stayed as they were
    before = np.array([0] * 9 + [1] * 2 + [1] * 12 + [0] * 8, dtype=float)
    after = np.array([1] * 9 + [0] * 2 + [1] * 12 + [0] * 8, dtype=float)
    result = paired_comparison(after, before)
    # two-sided exact binomial p of 2 or fewer of 11 discordant pairs, by hand
    p_hand = min(1.0, 2 * sum(math.comb(11, k) for k in range(3)) / 2**11)
    assert result.test == "mcnemar"
    assert result.p_value == pytest.approx(p_hand)
    assert result.delta == pytest.approx(7 / 31)
    differences = after - before
    assert result.se == pytest.approx(differences.std(ddof=1) / math.sqrt(31))


def test_paired_t_sees_a_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(0)
    before = rng.normal(600.0, 30.0, size=200)  # sizes vary a lot from image to image ...
    after = before - 2.0 + rng.normal(0.0, 1.0, size=200)  # ... the change is small and steady
    result = paired_comparison(after, before)
    differences = after - before
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(200))
    assert result.test == "paired-t"
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 199))
    assert result.p_value < 1e-10
    low_after, high_after = mean_interval(after)
    low_before, high_before = mean_interval(before)
    assert low_before < high_after and low_after < high_before  # the intervals overlap


def test_unchanged_samples_have_p_one_and_mismatched_ones_are_refused():
    values = np.array([0.0, 1.0, 1.0])
    assert paired_comparison(values, values).p_value == 1.0
    assert paired_comparison(values + 0.5, values + 0.5).p_value == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        paired_comparison(values, values[:2])
