"""A run's checkpoints as the trainer writes and reads them.

``checkpoints/last.pt``: :class:`~rnnreg.training.parts.TrainedParts`' state (weights,
optimizer, schedule, averaging, every random generator), the
:class:`~rnnreg.training.state.TrainingProgress` fields, the hidden state carried into
the next window, and the resolved config; written at every epoch's end, every
``trainer.checkpoint_every_s`` and on a stop signal, the one it replaces kept as
``last.prev.pt``. ``checkpoints/best.pt``: the weights of the best validation epoch.
A checkpoint loads on the CPU and moves onto the run's device (rnnreg/training/resume.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rnnreg.model.lm import State
from rnnreg.records.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from rnnreg.training.parts import TrainedParts
from rnnreg.training.resume import load_resumable
from rnnreg.training.state import TrainingProgress

log = logging.getLogger(__name__)


def save_last(
    ckpt_dir: Path,
    parts: TrainedParts,
    progress: TrainingProgress,
    hidden: State | None,
    elapsed_s: float,
    config: dict[str, Any],
) -> None:
    """``last.pt``, keeping the one it replaces as ``last.prev.pt``."""
    state = {**parts.state_dict(), **progress.state_dict()}
    state["elapsed_s"] = elapsed_s
    state["hidden"] = None if hidden is None else [list(hc) for hc in hidden]
    state["config"] = config
    save_checkpoint(ckpt_dir / LAST, state, keep_previous=True)


def restore_last(
    run_dir: Path,
    config: dict[str, Any],
    parts: TrainedParts,
    progress: TrainingProgress,
    device: torch.device,
) -> State | None:
    """Restore the newest readable checkpoint into ``parts`` and ``progress``; return the
    hidden state it carried, on ``device``."""
    path, ckpt = load_resumable(run_dir, config)
    parts.load_state_dict(ckpt, path)
    progress.load_state_dict(ckpt)
    log.info(
        "resumed from %s: %d epochs done, row %d, step %d",
        *(path, progress.epochs_done, progress.position, progress.step),
    )
    hidden = ckpt["hidden"]
    return None if hidden is None else [(h.to(device), c.to(device)) for h, c in hidden]


def save_best(
    ckpt_dir: Path, weights: dict[str, torch.Tensor], epoch: int, val_ppl: float, config: dict
) -> None:
    state = {"model": weights, "epoch": epoch, "val_ppl": val_ppl, "config": config}
    save_checkpoint(ckpt_dir / BEST, state)


def best_weights(ckpt_dir: Path) -> dict[str, torch.Tensor] | None:
    """The best validation epoch's weights (on the CPU), or None before any validation."""
    path = ckpt_dir / BEST
    return load_checkpoint(path)["model"] if path.exists() else None
