"""Checkpoint files: ``checkpoints/last.pt`` (and the ``last.prev.pt`` it replaced) and
``best.pt``, state_dicts plus the resolved config, written atomically; a damaged one is one
clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rnnreg import RnnregError
from rnnreg.core.files import atomic_torch_save

#: The checkpoint files in ``<run_dir>/checkpoints``: the newest state, the best weights.
LAST = "last.pt"


BEST = "best.pt"


def previous_checkpoint(path: Path) -> Path:
    """Where the copy before ``path`` is kept (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """``torch.save`` of plain state (state_dicts, tensors, numbers, the config), atomically;
    ``keep_previous`` keeps the checkpoint it replaces as :func:`previous_checkpoint`."""
    previous = previous_checkpoint(path) if keep_previous else None
    atomic_torch_save(state, path, keep_previous=previous)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; one clear error if unreadable."""
    if not path.is_file():
        raise RnnregError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnregError(
            f"checkpoint {path} is unreadable ({reason[:160]}); delete it to start over, "
            "or resume from another run directory"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise RnnregError(f"checkpoint {path} is not an rnnreg checkpoint (no model state)")
    return state
