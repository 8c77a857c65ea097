"""The evaluations that end a run: test perplexity of the final and best weights, and,
when configured, MC dropout, the continuous cache pointer and dynamic evaluation.

Every result is a perplexity keyed as in ``summary.json``: ``test_ppl_final``,
``test_ppl_best``, ``test_ppl`` (the weights of ``eval.test_weights``), and
``{val,test}_ppl_{mc,cache,dynamic}`` computed with those weights.
"""

from __future__ import annotations

import torch

from rnnreg.cache_pointer import cache_scores
from rnnreg.config import EvalConfig, MaskDraw, TestWeights
from rnnreg.dynamic_eval import evaluate_dynamic, gradient_statistics
from rnnreg.evaluate import evaluate, evaluate_mc
from rnnreg.model import LanguageModel
from rnnreg.testhooks import pause_point


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
            scores = cache_scores(model, stream, e.bptt, c.window, [c.theta], c.similarity.value)
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
) -> dict[str, float]:
    """Test perplexity of the final and of the best-validation weights; ``test_ppl`` (and
    MC dropout, with ``eval.mc_samples``) uses those of ``eval.test_weights``, which stay
    loaded in ``model`` afterwards.

    ``final``: the weights after the last step (averaged under NT-ASGD), as Zaremba's and
    Gal's Lua code test them; ``best``: the best validation epoch's (AWD-LSTM). Without a
    best checkpoint (no validation was ever better than inf) the final weights are the best.
    """
    model.load_state_dict(final_weights)
    results = {"test_ppl_final": evaluate(model, test, e.bptt).perplexity}
    pause_point("test")  # in the final evaluation
    if best_weights is not None:
        model.load_state_dict(best_weights)
        results["test_ppl_best"] = evaluate(model, test, e.bptt).perplexity
    else:
        results["test_ppl_best"] = results["test_ppl_final"]
    if e.test_weights is TestWeights.final:
        model.load_state_dict(final_weights)
    results["test_ppl"] = results[f"test_ppl_{e.test_weights.value}"]
    if e.mc_samples > 0:
        for split, source in (("val", valid), ("test", test)):
            mc = evaluate_mc(
                model,
                source,
                e.bptt,
                e.mc_samples,
                e.mc_replicas_per_pass,
                hold_masks=e.mc_mask_draw is MaskDraw.stream,
                embedding_dropout=e.mc_embedding_dropout,
            )
            results[f"{split}_ppl_mc"] = mc.perplexity
    return results
