"""Intervals and tests of the report against independent formulas and scipy."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

stats = pytest.importorskip("scipy.stats")  # a bare GPU machine may lack scipy

from rnnreg.reporting.report import build_report  # noqa: E402
from rnnreg.reporting.significance import (  # noqa: E402
    compare_to_reference,
    holm,
    mean_interval,
    sentence,
    welch,
)
from tests.test_report import fake_run  # noqa: E402

A = [101.0, 103.5, 102.2]
B = [110.0, 108.4, 111.9, 109.1]


def test_t_interval_is_mean_plus_minus_t_quantile_times_standard_error() -> None:
    interval = mean_interval(A)
    assert interval is not None and interval.method == "t"
    half = stats.t.ppf(0.975, len(A) - 1) * statistics.stdev(A) / math.sqrt(len(A))
    assert interval.low == pytest.approx(statistics.fmean(A) - half, rel=1e-12)
    assert interval.high == pytest.approx(statistics.fmean(A) + half, rel=1e-12)
    assert mean_interval([100.0]) is None  # one seed: no interval


def test_many_seeds_use_a_bootstrap_interval_around_the_mean() -> None:
    values = [100.0 + 0.7 * k for k in range(12)]
    interval = mean_interval(values)
    assert interval is not None and interval.method == "bootstrap"
    assert interval.low < statistics.fmean(values) < interval.high
    assert interval.high - interval.low < max(values) - min(values)


def test_welch_p_value_equals_the_welch_satterthwaite_formula() -> None:
    va, vb = statistics.variance(A) / len(A), statistics.variance(B) / len(B)
    t = (statistics.fmean(A) - statistics.fmean(B)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(A) - 1) + vb**2 / (len(B) - 1))
    c = welch("a", A, "b", B)
    assert c.p_value == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)
    assert c.difference == pytest.approx(statistics.fmean(A) - statistics.fmean(B))
    assert c.difference_std == pytest.approx(math.sqrt(va + vb))


def test_holm_on_a_hand_checked_case() -> None:
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_one_seed_gives_no_p_value() -> None:
    found = compare_to_reference({"none": B, "gal": [100.0], "zaremba": A}, "none")
    by_name = {c.variant: c for c in found}
    assert by_name["gal"].p_value is None and by_name["gal"].p_holm is None
    assert "no test possible" in sentence(by_name["gal"]) and "p =" not in sentence(by_name["gal"])
    assert by_name["zaremba"].p_holm == pytest.approx(by_name["zaremba"].p_value)  # one test
    assert by_name["zaremba"].significant
    assert "zaremba is better than none by" in sentence(by_name["zaremba"])


def test_the_report_shows_intervals_p_values_sentences_and_the_budget(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    for seed, (a, b) in enumerate(zip(A, B, strict=False), start=1):
        fake_run(outputs, f"none{seed}", variant="none", seed=seed, val=b + 3, test=b)
        fake_run(outputs, f"zar{seed}", variant="zaremba", seed=seed, val=a + 3, test=a)
    fake_run(outputs, "moon1", variant="moon", seed=1, val=150, test=140)
    text = build_report(outputs).read_text()
    assert "p = " in text and "†" in text
    assert "zaremba is better than none by" in text and "3 and 3 seeds" in text
    assert "moon vs none" in text and "no test possible" in text
    assert "budget-limited: 3 of 13 epochs" in text


def test_identical_seeds_give_a_point_interval_without_a_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = mean_interval([96.0, 96.0])
    assert interval is not None and interval.low == interval.high == 96.0
