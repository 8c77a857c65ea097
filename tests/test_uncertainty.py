"""Calibration and uncertainty (eval.uncertainty): each formula by hand, its behaviour on
synthetic predictors, MC dropout's mutual information, and memory that K does not grow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rnnreg.data.batching import batchify
from rnnreg.evaluation.mc import evaluate_mc
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.evaluation.uncertainty import (
    UncertaintyMeter,
    auroc,
    brier,
    entropy,
    expected_calibration_error,
    reliability,
)
from rnnreg.model.lm import LanguageModel

P = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.08, 0.62]])
TARGETS = torch.tensor([0, 1])


def test_each_metric_equals_the_hand_computation() -> None:
    assert brier(P, TARGETS).tolist() == pytest.approx(
        [0.3**2 + 0.2**2 + 0.1**2, 0.3**2 + 0.92**2 + 0.62**2]
    )
    h = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))]
    h.append(-(0.3 * math.log(0.3) + 0.08 * math.log(0.08) + 0.62 * math.log(0.62)))
    assert entropy(P).tolist() == pytest.approx(h)
    meter = UncertaintyMeter()
    meter.add(P, TARGETS)
    metrics, bins = meter.results()
    assert metrics["acc"] == 0.5  # the first is right, the second predicts word 2
    assert metrics["brier"] == pytest.approx((0.14 + 0.09 + 0.8464 + 0.3844) / 2)
    # conf 0.7 in bin (10/15, 11/15], right; conf 0.62 in bin (9/15, 10/15], wrong
    assert metrics["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.62, rel=1e-6)
    assert bins["count"][10] == 1 and bins["count"][9] == 1 and sum(bins["count"]) == 2
    assert bins["accuracy"][10] == 1 and bins["accuracy"][9] == 0
    assert metrics["auroc_maxprob"] == 1.0  # the error has the lower confidence
    assert "mi" not in metrics  # no samples: no mutual information


def test_ece_is_small_for_a_calibrated_predictor_and_large_for_an_overconfident_one() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(100_000, 10, generator=g), -1)
    labels = torch.multinomial(p, 1, generator=g).squeeze(1)  # drawn from its own p
    confidence, predicted = p.max(-1)
    assert expected_calibration_error(confidence, predicted == labels) < 0.01
    sharp = torch.softmax(3 * torch.log(p), -1)  # the same ranking, overconfident
    confidence, predicted = sharp.max(-1)
    assert expected_calibration_error(confidence, predicted == labels) > 0.1


def test_auroc_of_perfect_random_and_tied_scores() -> None:
    errors = torch.tensor([0, 0, 1, 1, 0, 1]).bool()
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8, 0.3, 0.7]), errors) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), errors) == 0.0
    assert auroc(torch.ones(6), errors) == 0.5  # ties count one half
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    g = torch.Generator().manual_seed(1)
    random = auroc(torch.rand(20_000, generator=g), torch.rand(20_000, generator=g) < 0.3)
    assert 0.48 < random < 0.52
    assert auroc(torch.rand(5), torch.zeros(5)) is None  # no errors: undefined


def test_mutual_information_is_zero_when_samples_agree_and_positive_when_not() -> None:
    agree = UncertaintyMeter()
    agree.add(P, TARGETS, expected_entropy=entropy(P))  # K copies of one distribution
    assert agree.results()[0]["mi"] == pytest.approx(0.0, abs=1e-7)
    samples = torch.stack([torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.05, 0.9, 0.05])])
    disagree = UncertaintyMeter()
    disagree.add(samples.mean(0, keepdim=True), TARGETS[:1], entropy(samples).mean(0, True))
    assert disagree.results()[0]["mi"] > 0.3


def mc_setup(make_config, variant: str):
    run = make_config(f"variant={variant}", "model.embedding_size=16", "model.hidden_size=16")
    torch.manual_seed(0)
    model = LanguageModel(50, run.model, run.variant)
    model.reset_parameters(1.0)  # confident predictions, sensitive to the masks
    source = batchify(torch.randint(0, 50, (600,), generator=torch.Generator().manual_seed(2)), 4)
    return model, source


def test_mc_without_dropout_is_the_standard_evaluation_with_zero_mi(make_config) -> None:
    model, source = mc_setup(make_config, "none")
    standard, mc = UncertaintyMeter(), UncertaintyMeter()
    evaluate(model, source, 8, standard)
    evaluate_mc(model, source, 8, samples=5, replicas_per_pass=2, meter=mc)
    s, m = standard.results()[0], mc.results()[0]
    for name in ("acc", "brier", "ece", "entropy", "auroc_maxprob"):
        assert m[name] == pytest.approx(s[name], rel=1e-4, abs=1e-6), name
    assert m["mi"] == pytest.approx(0.0, abs=1e-5)
    assert m["expected_entropy"] == pytest.approx(s["entropy"], rel=1e-5)


def test_mc_dropout_samples_disagree(make_config) -> None:
    model, source = mc_setup(make_config, "gal")
    meter = UncertaintyMeter()
    evaluate_mc(model, source, 8, samples=6, replicas_per_pass=4, meter=meter)
    metrics = meter.results()[0]
    assert metrics["mi"] > 1e-3 and metrics["entropy"] > metrics["expected_entropy"]
    assert 0.0 <= metrics["auroc_mi"] <= 1.0


def peak_rss_mb(samples: int) -> float:
    """Peak RSS of a fresh process that MC-evaluates a 10,000-word model with a meter."""
    code = f"""
import json, torch
from rnnreg.config.schema import ModelConfig, VariantConfig
from rnnreg.data.batching import batchify
from rnnreg.evaluation.mc import evaluate_mc
from rnnreg.evaluation.uncertainty import UncertaintyMeter
from rnnreg.model.lm import LanguageModel
torch.set_num_threads(1)
torch.manual_seed(0)
model = LanguageModel(10_000, ModelConfig(name="t", embedding_size=16, hidden_size=16),
                      VariantConfig(name="gal", p_input=0.5, p_output=0.5, p_hidden=0.3))
source = batchify(torch.randint(0, 10_000, (20 * 36,)), 20)
evaluate_mc(model, source, 35, samples={samples}, meter=UncertaintyMeter())
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(int(peak) / 1024))
"""
    # glibc keeps freed heap blocks below its (growing) mmap threshold; a fixed threshold
    # returns every large block, so the peak is what the evaluation held at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_mc_memory_does_not_grow_with_the_samples() -> None:
    """At batch 20, bptt 35 and V = 10,000 one replica's window is 28 MB of logits: K=100
    in one pass would hold 2.8 GB; passes of a bounded size hold the same at K=10."""
    small, large = peak_rss_mb(10), peak_rss_mb(100)
    assert abs(large - small) / small < 0.10, json.dumps({"K=10": small, "K=100": large})


def test_reliability_bins_cover_every_token() -> None:
    confidence = torch.tensor([0.0, 0.05, 0.5, 1.0])
    bins = reliability(confidence, torch.tensor([1, 0, 1, 1]))
    assert sum(bins["count"]) == 4 and bins["count"][0] == 2 and bins["count"][14] == 1


def test_a_run_records_its_calibration_and_a_finished_run_is_rescored(
    make_config, tmp_path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnreg.cli.rescore import rescore
    from rnnreg.training.trainer import Trainer

    run_dir = tmp_path / "run"
    run = make_config(
        "variant=gal", "trainer.max_steps=6", "eval.uncertainty=true", "eval.mc_samples=3"
    )
    summary = Trainer(run, run_dir).fit()
    for key in ("val_acc", "test_brier", "test_ece", "test_auroc_maxprob", "test_ece_mc"):
        assert 0.0 <= summary[key] <= 2.0, key
    assert summary["test_mi_mc"] > 0 and summary["val_expected_entropy_mc"] > 0
    assert set(summary["reliability"]) == {"val", "test", "val_mc", "test_mc"}
    bins = summary["reliability"]
    assert sum(bins["test"]["count"]) == sum(bins["test_mc"]["count"]) > 0  # every token
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert {"test/ece", "test/mi_mc", "val/auroc_mi_mc"} <= set(events.Tags()["scalars"])

    plain = make_config("variant=gal", "trainer.max_steps=6")
    Trainer(plain, tmp_path / "plain").fit()
    out = rescore(tmp_path / "plain", ["eval.uncertainty=true", "eval.mc_samples=4"], grid=False)
    assert out["uncertainty"]["mc_samples"] == 4 and out["test_mi_mc"] > 0
    rescored = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert rescored["test_ece_mc"] == out["test_ece_mc"] and "val_mc" in rescored["reliability"]
    assert rescored["mc_samples"] == 4  # the K of the MC numbers it now holds

    from rnnreg.reporting.report import build_report

    markdown = build_report(tmp_path).read_text()
    table = markdown.split("## Calibration and uncertainty (test)")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ptb")]
    # run (eval.mc_samples=3, eval.uncertainty) and plain (rescored with K=4) are one
    # trained configuration: one standard sub-row, and an MC sub-row for each K
    assert sorted(row.split(" | ")[3] for row in rows) == ["mc (K=3)", "mc (K=4)", "standard"]
    figures = sorted((tmp_path / "report" / "figures").glob("reliability_*.png"))
    assert figures and all(f"figures/{f.name}" in markdown for f in figures)


def test_calibration_adds_no_second_pass_over_the_test_split(make_config, tmp_path, monkeypatch):
    """The tested weights' test pass carries the meter; only validation is read again."""
    import rnnreg.evaluation.final as final
    from rnnreg.training.trainer import Trainer

    passes = []
    original = final.evaluate

    def counted(model, source, bptt, meter=None):
        passes.append((source.size(1), meter is not None))
        return original(model, source, bptt, meter)

    monkeypatch.setattr(final, "evaluate", counted)
    summary = Trainer(
        make_config("trainer.epochs=1", "eval.uncertainty=true"), tmp_path / "r"
    ).fit()
    assert passes == [(1, True), (4, True)]  # test at batch 1 once, validation at batch 4
    assert summary["test_ece"] is not None and summary["val_ece"] is not None
