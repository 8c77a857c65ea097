"""What a run leaves behind: TensorBoard events, metrics.csv, summary.json, checkpoints.

Every file that a reader may see half-written (summary, checkpoints, the CSV on
resume) is written to a temporary file in the same folder and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

from rnnreg import PROJECT_ROOT, RnnregError
from rnnreg.files import atomic_write_bytes

METRICS_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_ppl",
    "val_ppl",
    "tokens_per_s",
    "elapsed_s",
    "averaged",
    "asgd_switch_epoch",
)


def previous_checkpoint(path: Path) -> Path:
    """Where the copy before ``path`` is kept (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """``torch.save`` of plain state (state_dicts, tensors, numbers, the config), atomically;
    ``keep_previous`` keeps the checkpoint it replaces as :func:`previous_checkpoint`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    previous = previous_checkpoint(path) if keep_previous else None
    atomic_write_bytes(path, buffer.getvalue(), keep_previous=previous)


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


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())


class MetricsCsv:
    """``metrics.csv``: one row per epoch with :data:`METRICS_COLUMNS`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, epoch: int) -> None:
        """Keep only rows of epochs <= ``epoch`` (a resumed run re-writes what follows)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epoch]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, text.getvalue().encode())

    def append(self, row: dict[str, Any]) -> None:
        """Add a row; the file is rewritten atomically, so a full disk or a kill never
        leaves half a row."""
        old = self.path.read_text() if self.path.exists() else ""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS)
        if not old:
            writer.writeheader()
        writer.writerow({key: row[key] for key in METRICS_COLUMNS})
        atomic_write_bytes(self.path, (old + text.getvalue()).encode())


class TensorBoard:
    """Scalars under ``<run_dir>/tb``; on resume, events after ``purge_step`` are dropped."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's hyperparameters and final metrics for TensorBoard's HParams dashboard,
        written into the run's own event folder so runs compare side by side."""
        clean = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()
        }
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def git_commit() -> str | None:
    """The project's commit (``+dirty`` when the work tree has changes), or None."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
