"""Evaluate a finished run again, beyond the standard pass: cache pointer and dynamic
evaluation, without training.

    python -m rnnreg.rescore <run dir> [eval.cache.enabled=true] [eval.dynamic.enabled=true]
                             [eval.cache.theta=1.0 ...] [--grid]
    python -m rnnreg.rescore <run dir> eval.uncertainty=true eval.mc_samples=100

The run's own resolved config (from its checkpoint) is used, with the given ``eval.*``
overrides. The weights are those of ``eval.test_weights`` (``best``: ``best.pt``;
``final``: ``last.pt``, its averaged weights under NT-ASGD). ``--grid`` chooses θ and λ
of the cache (``eval.cache.theta_grid`` x ``interpolation_grid``) and η, λ of dynamic
evaluation (``eval.dynamic.lr_grid`` x ``decay_grid``, on the first ``grid_tokens``
validation tokens) on the validation set, never on test. The results go into the run's
``summary.json`` (``val_ppl_cache``, ``test_ppl_cache``, ``val_ppl_dynamic``,
``test_ppl_dynamic``, the settings used, and tokens/s of each evaluation next to the
standard one at batch 1), its TensorBoard events, and ``rescore.json``.
``eval.uncertainty=true`` adds the calibration and uncertainty of the standard and MC
evaluations (``{split}_{metric}[_mc]`` and the ``reliability`` bins;
:mod:`rnnreg.evaluation.uncertainty`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnreg import RnnregError, error_exit
from rnnreg.config.schema import EvalConfig, RunConfig, TestWeights, register
from rnnreg.core.files import atomic_write_bytes
from rnnreg.core.precision import apply_precision
from rnnreg.data.batching import batchify
from rnnreg.data.corpus import Corpus, load_corpus
from rnnreg.evaluation.cache_pointer import cache_scores
from rnnreg.evaluation.dynamic import evaluate_dynamic, gradient_statistics
from rnnreg.evaluation.final import mc_evaluations, merge_results, standard_uncertainty
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.model.lm import LanguageModel
from rnnreg.records.checkpoint import BEST, LAST, load_checkpoint
from rnnreg.records.recorder import TensorBoard
from rnnreg.records.summary import write_summary


def load_run(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, dict[str, Any]]:
    """The run's config with ``eval.*`` overrides, and the weights to evaluate."""
    last = load_checkpoint(run_dir / "checkpoints" / LAST)
    bad = [o for o in overrides if not o.split("=", 1)[0].startswith("eval.")]
    if bad:
        raise RnnregError(f"only eval.* settings can change when rescoring, not {bad[0]}")
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(RunConfig), last["config"], OmegaConf.from_dotlist(overrides)
        )
        run = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise RnnregError(f"invalid override: {str(exc).splitlines()[0]}") from exc
    assert isinstance(run, RunConfig)
    if run.eval.test_weights is TestWeights.best and (run_dir / "checkpoints" / BEST).exists():
        return run, load_checkpoint(run_dir / "checkpoints" / BEST)["model"]
    averaged = (last.get("averaging") or {}).get("averaged")
    if averaged:  # NT-ASGD: the averaged weights are the final ones
        prefix = "module."
        return run, {k[len(prefix) :]: v for k, v in averaged.items() if k.startswith(prefix)}
    return run, last["model"]


def load_model(
    run_dir: Path, overrides: list[str], threads: int | None = None
) -> tuple[RunConfig, Corpus, LanguageModel]:
    """The run's config, its corpus and its tested weights in an eager model in eval mode,
    on ``threads`` torch threads (default: the run's ``trainer.threads``)."""
    run, weights = load_run(run_dir, overrides)
    if threads or run.trainer.threads:
        torch.set_num_threads(threads or run.trainer.threads)
    corpus = load_corpus(run.dataset)
    model_cfg = dataclasses.replace(run.model, compile=False)
    apply_precision(run.trainer.precision)
    model = LanguageModel(corpus.vocab_size, model_cfg, run.variant, run.trainer.precision)
    model.load_state_dict(weights)
    model.eval()
    return run, corpus, model


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def rescore(
    run_dir: Path, overrides: list[str], grid: bool, threads: int | None = None
) -> dict[str, Any]:
    """Every evaluation asked for, of the run's tested weights, recorded in ``run_dir``;
    on ``threads`` torch threads (default: the run's ``trainer.threads``)."""
    run, corpus, model = load_model(run_dir, overrides, threads)
    streams = {"val": batchify(corpus.valid, 1), "test": batchify(corpus.test, 1)}
    e = run.eval
    out: dict[str, Any] = {"rescored_weights": e.test_weights.value, "eval_tokens_per_s": {}}
    tokens = {split: stream.size(0) - 1 for split, stream in streams.items()}
    seconds = 0.0
    for split, stream in streams.items():
        standard, took = _timed(evaluate, model, stream, e.bptt)
        out[f"{split}_ppl_batch1"] = standard.perplexity
        seconds += took
    out["eval_tokens_per_s"]["standard"] = sum(tokens.values()) / seconds
    if e.uncertainty:
        out = merge_results(out, uncertainty(model, corpus, e))
    if e.cache.enabled or grid:
        out |= rescore_cache(model, streams, e, grid)
        out["eval_tokens_per_s"]["cache"] = out.pop("cache_tokens_per_s")
    if e.dynamic.enabled or grid:
        out |= rescore_dynamic(model, streams, corpus, e, grid)
        out["eval_tokens_per_s"]["dynamic"] = out.pop("dynamic_tokens_per_s")
    record(run_dir, out)
    return out


def rescore_cache(
    model: LanguageModel, streams: dict[str, torch.Tensor], e: EvalConfig, grid: bool
) -> dict[str, Any]:
    """The cache pointer on the batch-1 streams, θ and λ chosen on validation with ``grid``."""
    c, out = e.cache, {}
    tokens = {split: stream.size(0) - 1 for split, stream in streams.items()}
    thetas = sorted(set(c.theta_grid) | {c.theta}) if grid else [c.theta]
    val, took = _timed(
        cache_scores,
        model,
        streams["val"],
        e.bptt,
        c.window,
        thetas,
        c.similarity.value,
        c.full_window,
    )
    theta, lam = c.theta, c.interpolation
    if grid:
        pairs = itertools.product(thetas, sorted(set(c.interpolation_grid) | {lam}))
        theta, lam = min(pairs, key=lambda tl: val.evaluation(*tl).perplexity)
    test, took_test = _timed(
        cache_scores,
        model,
        streams["test"],
        e.bptt,
        c.window,
        [theta],
        c.similarity.value,
        c.full_window,
    )
    out["val_ppl_cache"] = val.evaluation(theta, lam).perplexity
    out["test_ppl_cache"] = test.evaluation(theta, lam).perplexity
    out["cache"] = {
        "window": c.window,
        "theta": theta,
        "interpolation": lam,
        "similarity": c.similarity.value,
        "chosen_on_validation": grid,
    }
    out["cache_tokens_per_s"] = tokens["test"] / took_test
    return out


def rescore_dynamic(
    model: LanguageModel,
    streams: dict[str, torch.Tensor],
    corpus: Corpus,
    e: EvalConfig,
    grid: bool,
) -> dict[str, Any]:
    """Dynamic evaluation of the batch-1 streams, η and λ chosen on validation with ``grid``."""
    d, out = e.dynamic, {}
    tokens = {split: stream.size(0) - 1 for split, stream in streams.items()}
    ms, stats_s = _timed(
        gradient_statistics,
        model,
        corpus.train,
        d.segment,
        d.stats_batch_size,
        d.stats_max_batches,
    )
    lr, decay = d.lr, d.decay
    if grid:
        head = streams["val"][: d.grid_tokens + 1]
        pairs = itertools.product(
            sorted(set(d.lr_grid) | {lr}), sorted(set(d.decay_grid) | {decay})
        )
        lr, decay = min(
            pairs,
            key=lambda ld: (
                evaluate_dynamic(model, head, ms, ld[0], ld[1], d.epsilon, d.segment).perplexity
            ),
        )
    for split, stream in streams.items():
        dynamic, took = _timed(evaluate_dynamic, model, stream, ms, lr, decay, d.epsilon, d.segment)
        out[f"{split}_ppl_dynamic"] = dynamic.perplexity
    out["dynamic"] = {
        "lr": lr,
        "decay": decay,
        "epsilon": d.epsilon,
        "segment": d.segment,
        "stats_batch_size": d.stats_batch_size,
        "stats_max_batches": d.stats_max_batches,
        "stats_seconds": stats_s,
        "chosen_on_validation": grid,
    }
    out["dynamic_tokens_per_s"] = tokens["test"] / took
    return out


def uncertainty(model: LanguageModel, corpus: Corpus, e: EvalConfig) -> dict[str, Any]:
    """``eval.uncertainty``: the standard and (with ``eval.mc_samples``) MC evaluations'
    calibration and uncertainty, at the run's evaluation batch sizes, timed."""
    batched = {
        "val": batchify(corpus.valid, e.batch_size),
        "test": batchify(corpus.test, e.test_batch_size),
    }
    out, took = _timed(standard_uncertainty, model, batched, e.bptt)
    timing = {"standard_s": took}
    if e.mc_samples > 0:  # the summary's MC numbers are now these: say with what
        mc, timing["mc_s"] = _timed(mc_evaluations, model, batched, e)
        out = merge_results(out, mc) | {
            "mc_samples": e.mc_samples,
            "mc_mask_draw": e.mc_mask_draw.value,
        }
    return {**out, "uncertainty": {"mc_samples": e.mc_samples, **timing}}


def record(run_dir: Path, out: dict[str, Any]) -> None:
    """Into ``rescore.json``, ``summary.json`` and the TensorBoard events."""
    atomic_write_bytes(run_dir / "rescore.json", (json.dumps(out, indent=2) + "\n").encode())
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    write_summary(summary_path, {**summary, **out})
    tb = TensorBoard(run_dir / "tb")
    scalars = {
        k: v for k, v in out.items() if k.startswith(("val_", "test_")) and isinstance(v, float)
    }
    tb.scalars(
        int(summary.get("steps") or 0), {k.replace("_", "/", 1): v for k, v in scalars.items()}
    )
    tb.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="eval.* settings, key=value")
    parser.add_argument("--grid", action="store_true", help="choose the settings on validation")
    parser.add_argument("--threads", type=int, help="torch threads (default: the run's)")
    args = parser.parse_intermixed_args(argv)  # --grid before or after the overrides
    register()
    try:
        out = rescore(args.run_dir.resolve(), args.overrides, args.grid, args.threads)
    except RnnregError as exc:
        return error_exit(exc)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
