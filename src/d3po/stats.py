"""The statistics of the evaluation tables, from statsmodels and scipy.

Intervals (95 %): Wilson for rates, normal for means over images. Paired comparisons: the
evaluation samples every model on the same noise, so image i of a checkpoint and image i of
the base model are a pair; a paired test (McNemar for 0/1 judgements, paired t for sizes and
scores) sees effects that unpaired intervals of the two means hide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

Z95 = 1.959964  # the normal quantile of 95 % intervals
ALPHA95 = 2 * scipy_stats.norm.sf(Z95)  # the same intervals by their alpha, as statsmodels takes


def wilson_interval(rate: float, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion ``rate`` observed over ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    low, high = proportion_confint(rate * n, n, alpha=ALPHA95, method="wilson")
    return float(low), float(high)


def is_binary(values: np.ndarray) -> bool:
    """Every value 0 or 1: a rate (a judge's yes/no), not a measurement."""
    return bool(np.isin(np.asarray(values, dtype=np.float64), (0.0, 1.0)).all())


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """95 % interval of the mean: Wilson when every value is 0 or 1 (a rate), else normal."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if is_binary(values):
        return wilson_interval(float(values.mean()), values.size)
    if values.size == 1:
        return float("nan"), float("nan")
    low, high = DescrStatsW(values).zconfint_mean(alpha=ALPHA95)
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """``after - before`` over pairs: mean difference, its standard error, a two-sided p-value
    and the test that gave it ("mcnemar" for 0/1 values, "paired-t" otherwise)."""

    delta: float
    se: float
    p_value: float
    test: str


def paired_comparison(after: np.ndarray, before: np.ndarray) -> PairedComparison:
    """Compare two measurements of the same items (image i of each set shares its noise).

    McNemar's exact test on the discordant pairs for rates (the binomial test of how many
    pairs went 0 -> 1 against 1 -> 0), the paired t-test otherwise. Identical samples give
    p = 1 (nothing changed), not NaN.
    """
    after, before = np.asarray(after, np.float64), np.asarray(before, np.float64)
    if after.shape != before.shape or after.size == 0:
        raise ValueError(f"paired samples differ in size: {after.shape} vs {before.shape}")
    differences = after - before
    delta = float(differences.mean())
    se = float(differences.std(ddof=1) / np.sqrt(differences.size)) if after.size > 1 else np.nan
    if is_binary(after) and is_binary(before):
        gained = int(((after == 1) & (before == 0)).sum())
        lost = int(((after == 0) & (before == 1)).sum())
        table = [[0, gained], [lost, 0]]
        p_value = float(mcnemar(table, exact=True).pvalue) if gained + lost else 1.0
        return PairedComparison(delta, se, p_value, "mcnemar")
    changed = np.any(differences) and after.size > 1
    p_value = float(scipy_stats.ttest_rel(after, before).pvalue) if changed else 1.0
    return PairedComparison(delta, se, p_value, "paired-t")
