"""Whether a difference between variants is larger than seed noise (scipy's statistics).

For each group of runs (one variant, its seeds) the report gives a 95% interval of the
mean: Student's t interval, mean ± t_{0.975, n-1} · s / √n, or a percentile bootstrap of
the mean when there are at least :data:`BOOTSTRAP_MIN_SEEDS` seeds. Between a variant
and the reference variant of the same dataset × model × budget × evaluation: Welch's
t-test (unequal variances), its p-values corrected for the number of comparisons by
Holm's step-down method. Fewer than two seeds on a side: no test is possible, and no
p-value is printed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A bootstrap interval needs enough seeds to resample; below this, the t interval.
BOOTSTRAP_MIN_SEEDS = 10


ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "t" or "bootstrap"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """A ``confidence`` interval of the mean of ``values``; None for fewer than two."""
    if len(values) < 2:
        return None
    from scipy import stats  # imported when used: a bare GPU machine lacks it

    data = np.asarray(values, dtype=float)
    if len(data) >= BOOTSTRAP_MIN_SEEDS:
        result = stats.bootstrap(
            (data,), np.mean, confidence_level=confidence, method="percentile", random_state=0
        )
        ci = result.confidence_interval
        return Interval(float(ci.low), float(ci.high), "bootstrap")
    if np.ptp(data) == 0:  # every seed the same number: the interval is that point
        return Interval(float(data[0]), float(data[0]), "t")
    low, high = stats.t.interval(confidence, len(data) - 1, loc=data.mean(), scale=stats.sem(data))
    return Interval(float(low), float(high), "t")


@dataclass(frozen=True)
class Comparison:
    variant: str
    reference: str
    difference: float  # mean(variant) - mean(reference)
    difference_std: float  # standard error of the difference (Welch)
    n_variant: int
    n_reference: int
    p_value: float | None  # Welch's, uncorrected; None when no test is possible
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def welch(
    variant: str, values: Sequence[float], reference: str, reference_values: Sequence[float]
) -> Comparison:
    """Welch's two-sided t-test of mean(values) against mean(reference_values)."""
    n, m = len(values), len(reference_values)
    difference = statistics.fmean(values) - statistics.fmean(reference_values)
    if n < 2 or m < 2:
        return Comparison(variant, reference, difference, math.nan, n, m, None)
    from scipy import stats

    result = stats.ttest_ind(values, reference_values, equal_var=False)
    std = math.sqrt(statistics.variance(values) / n + statistics.variance(reference_values) / m)
    return Comparison(variant, reference, difference, std, n, m, float(result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sorted ascending, p_(i) · (k − i + 1), made
    monotone by a running maximum and capped at 1 (same order as given)."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted = [0.0] * k
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, p_values[index] * (k - rank)))
        adjusted[index] = running
    return adjusted


def compare_to_reference(groups: dict[str, Sequence[float]], reference: str) -> list[Comparison]:
    """Every variant of ``groups`` (name -> values over seeds) against ``reference``,
    with Holm-corrected p-values over the comparisons that could be tested."""
    if reference not in groups:
        return []
    comparisons = [
        welch(name, values, reference, groups[reference])
        for name, values in sorted(groups.items())
        if name != reference
    ]
    tested = [c for c in comparisons if c.p_value is not None]
    adjusted = dict(
        zip((c.variant for c in tested), holm([c.p_value for c in tested]), strict=True)
    )
    return [Comparison(**{**c.__dict__, "p_holm": adjusted.get(c.variant)}) for c in comparisons]


def sentence(c: Comparison, metric: str = "test perplexity") -> str:
    """One plain sentence: which is better, by how much, how sure."""
    if c.p_value is None:
        return (
            f"{c.variant} vs {c.reference}: {abs(c.difference):.1f} {metric} apart, "
            f"no test possible ({c.n_variant} and {c.n_reference} seeds; 2 each are needed)."
        )
    better = "better" if c.difference < 0 else "worse"
    verdict = "" if c.significant else " (not significant)"
    return (
        f"{c.variant} is {better} than {c.reference} by {abs(c.difference):.1f} ± "
        f"{c.difference_std:.1f} {metric}, p = {c.p_holm:.3g} (Holm), "
        f"{c.n_variant} and {c.n_reference} seeds{verdict}."
    )
