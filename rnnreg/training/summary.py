"""``summary.json``'s contents: what the run is, how far it got, its results, where it ran."""

from __future__ import annotations

import math
from typing import Any

import torch

from rnnreg.config.schema import RunConfig, as_plain_dict
from rnnreg.model.lm import count_parameters
from rnnreg.records.provenance import cpu_model, device_name
from rnnreg.training.parts import TrainedParts
from rnnreg.training.state import TrainingProgress

#: The final results a summary carries (None until the run completes).
FINAL_RESULTS = (
    "test_ppl",
    "test_ppl_best",
    "test_ppl_final",
    *(f"{split}_ppl_{kind}" for kind in ("mc", "cache", "dynamic") for split in ("val", "test")),
)


def run_summary(
    status: str,
    run: RunConfig,
    progress: TrainingProgress,
    parts: TrainedParts,
    final: dict[str, float],
    **facts: Any,
) -> dict[str, Any]:
    """summary.json: what the run is, how far it got, its results, where it ran.

    ``facts``: the labels and the figures only the trainer knows (``wall_time_s``,
    ``device``, ``tokens_per_epoch``, ``git_commit``, ``run_dir``, ...).
    """
    p, model, device = progress, parts.model, facts.pop("device")
    return {
        "status": status,
        "dataset": run.dataset.name,
        "model": run.model.name,
        "variant": run.variant.name,
        "seed": run.seed,
        "dropout": run.variant.rates(),
        "params": count_parameters(model),
        "epochs": p.epochs_done,
        "epochs_planned": run.trainer.epochs,
        "steps": p.step,
        "best_val_ppl": None if math.isinf(p.best_val_ppl) else p.best_val_ppl,
        "best_epoch": p.best_epoch,
        "last_val_ppl": None if math.isnan(p.last_val_ppl) else p.last_val_ppl,
        **{key: final.get(key) for key in FINAL_RESULTS},
        **final,  # and what else was evaluated (eval.uncertainty's metrics and bins)
        "precision": run.trainer.precision.value,
        "test_weights": run.eval.test_weights.value,
        "mc_samples": run.eval.mc_samples,
        "mc_mask_draw": run.eval.mc_mask_draw.value,
        "lstm_path": model.lstm_path,
        "loop_mode": model.loop_mode,
        "compilations": model.compilations,
        "stage": run.trainer.stage.value,
        "init_from": run.trainer.init_from,
        "asgd_switch_epoch": parts.averaging.switch_epoch,
        "tokens_per_s": p.train_tokens / p.train_seconds if p.train_seconds else None,
        "train_tokens": p.train_tokens,
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "machines": p.machines,
        **facts,
        "config": as_plain_dict(run),
    }
