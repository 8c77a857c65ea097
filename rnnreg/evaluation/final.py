"""The evaluations that end a run: test perplexity of the final and best weights, and,
when configured, MC dropout, the continuous cache pointer and dynamic evaluation.

Every result is a perplexity keyed as in ``summary.json``: ``test_ppl_final``,
``test_ppl_best``, ``test_ppl`` (the weights of ``eval.test_weights``), and
``{val,test}_ppl_{mc,cache,dynamic}`` computed with those weights.
"""

from __future__ import annotations

from typing import Any

import torch

from rnnreg.config.schema import EvalConfig, MaskDraw, TestWeights
from rnnreg.core.testhooks import pause_point
from rnnreg.data.batching import batchify
from rnnreg.data.corpus import Corpus
from rnnreg.evaluation.cache_pointer import cache_scores
from rnnreg.evaluation.dynamic import evaluate_dynamic, gradient_statistics
from rnnreg.evaluation.mc import evaluate_mc
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.evaluation.uncertainty import UncertaintyMeter
from rnnreg.model.lm import LanguageModel


def extra_evaluations(
    model: LanguageModel,
    streams: dict[str, torch.Tensor],
    train: torch.Tensor,
    e: EvalConfig,
) -> dict[str, float]:
    """The cache pointer and dynamic evaluation (when enabled) of the (T, 1) ``streams``
    (``val``, ``test``), with the weights loaded in ``model``; ``train`` is the 1-D
    training stream for dynamic evaluation's gradient statistics."""
    results: dict[str, float] = {}
    c = e.cache
    if c.enabled:
        for split, stream in streams.items():
            scores = cache_scores(
                model, stream, e.bptt, c.window, [c.theta], c.similarity.value, c.full_window
            )
            results[f"{split}_ppl_cache"] = scores.evaluation(c.theta, c.interpolation).perplexity
    d = e.dynamic
    if d.enabled:
        ms = gradient_statistics(model, train, d.segment, d.stats_batch_size, d.stats_max_batches)
        for split, stream in streams.items():
            dynamic = evaluate_dynamic(model, stream, ms, d.lr, d.decay, d.epsilon, d.segment)
            results[f"{split}_ppl_dynamic"] = dynamic.perplexity
    return results


def final_evaluation(
    model: LanguageModel,
    final_weights: dict[str, torch.Tensor],
    best_weights: dict[str, torch.Tensor] | None,
    valid: torch.Tensor,
    test: torch.Tensor,
    e: EvalConfig,
) -> dict[str, Any]:
    """Test perplexity of the final and of the best-validation weights; ``test_ppl`` (and
    MC dropout, with ``eval.mc_samples``) uses those of ``eval.test_weights``, which stay
    loaded in ``model`` afterwards.

    ``final``: the weights after the last step (averaged under NT-ASGD), as Zaremba's and
    Gal's Lua code test them; ``best``: the best validation epoch's (AWD-LSTM). Without a
    best checkpoint (no validation was ever better than inf) the final weights are the best.
    """
    two = best_weights is not None and not same_weights(best_weights, final_weights)
    meter = UncertaintyMeter() if e.uncertainty else None  # on the tested weights' pass
    on_final = meter if e.test_weights is TestWeights.final or not two else None
    model.load_state_dict(final_weights)
    results: dict[str, Any] = {"test_ppl_final": evaluate(model, test, e.bptt, on_final).perplexity}
    pause_point("test")  # in the final evaluation
    if two:
        model.load_state_dict(best_weights)
        on_best = meter if e.test_weights is TestWeights.best else None
        results["test_ppl_best"] = evaluate(model, test, e.bptt, on_best).perplexity
    else:  # the last epoch was the best (or none was validated): one pass scores both
        results["test_ppl_best"] = results["test_ppl_final"]
    if e.test_weights is TestWeights.final:
        model.load_state_dict(final_weights)
    results["test_ppl"] = results[f"test_ppl_{e.test_weights.value}"]
    if meter is not None:  # the test split measured in its pass above; validation now
        results = merge_results(results, uncertainty_results("test", "", meter))
        results = merge_results(results, standard_uncertainty(model, {"val": valid}, e.bptt))
    if e.mc_samples > 0:
        results = merge_results(results, mc_evaluations(model, {"val": valid, "test": test}, e))
    return results


def merge_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` and ``b``, their ``reliability`` bins joined."""
    bins = {**a.get("reliability", {}), **b.get("reliability", {})}
    return {**a, **b, **({"reliability": bins} if bins else {})}


def uncertainty_results(split: str, suffix: str, meter: UncertaintyMeter) -> dict[str, Any]:
    """A meter's metrics as ``{split}_{metric}{suffix}`` (``test_ece_mc``), and its
    reliability bins under ``reliability`` → ``{split}{suffix}``."""
    metrics, bins = meter.results()
    out: dict[str, Any] = {f"{split}_{name}{suffix}": value for name, value in metrics.items()}
    return out | {"reliability": {f"{split}{suffix}": bins}}


def standard_uncertainty(
    model: LanguageModel, sources: dict[str, torch.Tensor], bptt: int
) -> dict[str, Any]:
    """Calibration and uncertainty of the standard evaluation of each source."""
    results: dict[str, Any] = {}
    for split, source in sources.items():
        meter = UncertaintyMeter()
        evaluate(model, source, bptt, meter)
        results = merge_results(results, uncertainty_results(split, "", meter))
    return results


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state_dicts hold the same numbers (on whatever devices)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a)


def mc_evaluations(
    model: LanguageModel, sources: dict[str, torch.Tensor], e: EvalConfig
) -> dict[str, Any]:
    """``{split}_ppl_mc`` of each source with ``eval.mc_samples`` samples (and, with
    ``eval.uncertainty``, the samples' calibration and uncertainty)."""
    results: dict[str, Any] = {}
    for split, source in sources.items():
        meter = UncertaintyMeter() if e.uncertainty else None
        mc = evaluate_mc(
            model,
            source,
            e.bptt,
            e.mc_samples,
            e.mc_replicas_per_pass,
            hold_masks=e.mc_mask_draw is MaskDraw.stream,
            embedding_dropout=e.mc_embedding_dropout,
            meter=meter,
        )
        results[f"{split}_ppl_mc"] = mc.perplexity
        if meter is not None:
            results = merge_results(results, uncertainty_results(split, "_mc", meter))
    return results


def evaluate_run(
    model: LanguageModel,
    final_state: dict[str, torch.Tensor],
    best_weights: dict[str, torch.Tensor] | None,
    splits: tuple[torch.Tensor, torch.Tensor, Corpus],
    e: EvalConfig,
) -> dict[str, Any]:
    """Every evaluation that ends a run: :func:`final_evaluation` of the batched
    (validation, test) splits, then, when enabled, :func:`extra_evaluations` at batch 1
    of the corpus's streams, on the tested weights."""
    valid, test, corpus = splits
    final_weights = {key: value.detach().clone() for key, value in final_state.items()}
    results = final_evaluation(model, final_weights, best_weights, valid, test, e)
    if e.cache.enabled or e.dynamic.enabled:
        device = test.device
        streams = {"val": batchify(corpus.valid, 1), "test": batchify(corpus.test, 1)}
        streams = {name: stream.to(device) for name, stream in streams.items()}
        results |= extra_evaluations(model, streams, corpus.train, e)
    return results
