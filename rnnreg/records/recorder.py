"""What a run leaves behind: TensorBoard events, metrics.csv, summary.json, checkpoints.

Every file that a reader may see half-written (summary, checkpoints, the CSV on
resume) is written to a temporary file in the same folder and renamed into place.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rnnreg.core.files import atomic_write_bytes
from rnnreg.records.loggers import Tracker
from rnnreg.records.summary import write_summary

log = logging.getLogger(__name__)


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


#: HParams: these summary fields, the dropout rates, and these settings by short name.
HPARAM_FIELDS = ("dataset", "model", "variant", "seed", "lstm_path", "stage")


HPARAM_SETTINGS = {
    "hidden_size": ("model", "hidden_size"),
    "num_layers": ("model", "num_layers"),
    "optim": ("optim", "name"),
    "lr": ("optim", "lr"),
    "epochs": ("trainer", "epochs"),
    "batch_size": ("trainer", "batch_size"),
    "bptt": ("trainer", "bptt"),
}


def hparams_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The knobs a comparison varies, taken from a run's summary."""
    config = summary["config"]
    params = {key: summary[key] for key in HPARAM_FIELDS}
    params.update({name: config[group][key] for name, (group, key) in HPARAM_SETTINGS.items()})
    params.update(summary["dropout"])
    return params


class IntervalMeter:
    """Training NLL, tokens, steps, summed gradient norms and seconds since the last log
    line, as read from the device (:class:`rnnreg.training.state.StepTotals`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the trainer's: stops left out (rnnreg/core/process.py, RunClock)
        self.reset()

    def reset(self) -> None:
        self.nll, self.tokens, self.steps, self.start = 0.0, 0, 0, self.clock()
        self.grad_norm = 0.0

    def add(self, nll_sum: float, tokens: int, steps: int, grad_norm_sum: float) -> None:
        self.nll += nll_sum
        self.tokens += tokens
        self.steps += steps
        self.grad_norm += grad_norm_sum

    @property
    def ppl(self) -> float:
        return math.exp(min(self.nll / max(self.tokens, 1), 700.0))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.clock() - self.start, 1e-9)

    def scalars(self, lr: float) -> dict[str, float]:
        """``train/grad_norm`` is the mean pre-clipping norm over the interval's steps."""
        return {
            "train/loss": self.nll / max(self.tokens, 1),
            "train/ppl": self.ppl,
            "train/grad_norm": self.grad_norm / max(self.steps, 1),
            "train/lr": lr,
            "train/tokens_per_s": self.tokens_per_s,
        }


def epoch_bar(mode: str, total: int, initial: int, epoch: int) -> tqdm | None:
    """The epoch's progress bar in windows (``trainer.progress``: ``bar``; ``auto`` when
    stderr is a terminal), or None when the log lines show the progress instead."""
    if not (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
        return None
    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch}",
        unit="win",
        dynamic_ncols=True,
        leave=False,
    )


@dataclass
class EpochRecord:
    """What an epoch's end records (``metrics.csv`` has these columns but ``val_loss``)."""

    epoch: int
    step: int
    lr: float
    train_ppl: float
    val_ppl: float
    val_loss: float
    tokens_per_s: float
    elapsed_s: float
    averaged: bool
    asgd_switch_epoch: int | None


class RunRecorder:
    """Every record of a run in one place: ``metrics.csv`` (a row per epoch), TensorBoard
    scalars and HParams (``tb/``), ``summary.json``, and the log lines.

    On resume (``resumed_step`` > 0) the CSV rows after ``epochs_done`` and the events
    after ``resumed_step`` are dropped: the resumed run writes them again.
    """

    def __init__(
        self, run_dir: Path, resumed_step: int, epochs_done: int, tracker: Tracker | None = None
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = run_dir / "summary.json"
        self.metrics = MetricsCsv(run_dir / "metrics.csv")
        if resumed_step:
            self.metrics.truncate_after(epochs_done)
        self.tb = TensorBoard(run_dir / "tb", purge_step=resumed_step or None)
        self.tracker = tracker  # the logger group's W&B or MLflow run, if chosen

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.tb.scalars(step, values)
        if self.tracker is not None:
            self.tracker.scalars(step, values)

    def epoch(self, r: EpochRecord) -> None:
        """The end of an epoch: its CSV row, its scalars, its log line."""
        self.metrics.append(
            {
                **dataclasses.asdict(r),
                "train_ppl": round(r.train_ppl, 4),
                "val_ppl": round(r.val_ppl, 4),
                "tokens_per_s": round(r.tokens_per_s, 1),
                "elapsed_s": round(r.elapsed_s, 1),
                "averaged": int(r.averaged),
                # 0 for a fine-tuning stage (averaged from its first step); blank: never
                "asgd_switch_epoch": "" if r.asgd_switch_epoch is None else r.asgd_switch_epoch,
            }
        )
        scalars = {"epoch/train_ppl": r.train_ppl, "val/ppl": r.val_ppl, "val/loss": r.val_loss}
        scalars |= {"epoch/lr": r.lr, "epoch/tokens_per_s": r.tokens_per_s, "epoch/epoch": r.epoch}
        self.scalars(r.step, {**scalars, "epoch/averaged": float(r.averaged)})
        self.tb.flush()
        log.info(
            "epoch %d done: lr %.4g  train ppl %.2f  val ppl %.2f%s  %.0f tok/s",
            *(r.epoch, r.lr, r.train_ppl, r.val_ppl),
            " (averaged weights)" if r.averaged else "",
            r.tokens_per_s,
        )

    def final(self, step: int, summary: dict[str, Any], results: dict[str, float]) -> None:
        """The final evaluation: scalars (``test/ppl``, ...), HParams, one log line."""
        best = math.inf if summary["best_val_ppl"] is None else summary["best_val_ppl"]
        results = {k: v for k, v in results.items() if isinstance(v, float)}  # not the bins
        self.scalars(step, {key.replace("_", "/", 1): v for key, v in results.items()})
        self.tb.hparams(hparams_of(summary), {"best_val_ppl": best, **results})
        if self.tracker is not None:
            self.tracker.hparams(hparams_of(summary), {"best_val_ppl": best, **results})
        log.info(
            "best val ppl %.2f (epoch %d); %s",
            best,
            summary["best_epoch"],
            ", ".join(f"{key} {value:.2f}" for key, value in results.items()),
        )

    def interval(
        self,
        step: int,
        meter: IntervalMeter,
        scalars: dict[str, float],
        line: tuple[int, int, int, float] | None,
    ) -> None:
        """Every ``trainer.log_every_steps``: the training scalars and, unless a progress
        bar shows them, a log line ``line`` = (epoch, row, last row, lr)."""
        self.scalars(step, scalars)
        if line is not None:
            epoch, row, last_row, lr = line
            log.info(
                "epoch %d  row %d/%d  step %d  lr %.4g  ppl %.2f  %.0f tok/s",
                *(epoch, row, last_row, step, lr, meter.ppl, meter.tokens_per_s),
            )
        meter.reset()

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        write_summary(self.summary_path, summary)
        return summary

    def close(self) -> None:
        self.tb.close()
        if self.tracker is not None:
            self.tracker.close()
