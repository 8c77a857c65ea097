"""What a run is made of and has done so far, and how a stretch of training ended.

A checkpoint (``checkpoints/last.pt``) holds :class:`TrainedParts`' state (weights,
optimizer, schedule, averaging, random generators), the :class:`TrainingProgress` fields
(flat), the hidden state and the resolved config; :mod:`rnnreg.training.resume` says when it may be
resumed. ``summary.json`` is :func:`run_summary`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import torch

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """How a stretch of training ended."""

    done = "done"  # the epoch ran to its end
    max_steps = "max_steps"  # trainer.max_steps reached
    stopped = "stopped"  # a signal (SIGINT, SIGTERM, SLURM's preemption)
    diverged = "diverged"  # a non-finite loss
    pruned = "pruned"  # the epoch hook asked to stop (a tuning trial judged hopeless)


@dataclass
class TrainingProgress:
    """The counters of a run, saved in every checkpoint and restored on resume."""

    epochs_done: int = 0
    #: The first row of the next window in the current epoch.
    position: int = 0
    step: int = 0
    epoch_nll: float = 0.0
    epoch_tokens: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    train_tokens: int = 0
    #: Wall time of the processes before this one (saved: up to the checkpoint).
    elapsed_s: float = 0.0
    best_val_ppl: float = math.inf
    best_epoch: int = 0
    #: The last epoch's validation perplexity (the final weights).
    last_val_ppl: float = math.nan
    #: A fine-tuning stage that stopped improving (AWD's rule).
    finished: bool = False
    #: Where each process that trained this run ran, in order, repeats merged
    #: (:func:`~rnnreg.records.provenance.machine_label`): a run resumed on another
    #: machine or thread count is not timed against the others (equal-time view).
    machines: list[str] = field(default_factory=list)

    #: Fields that checkpoints written before they existed lack (their default is used).
    ADDED_LATER = ("last_val_ppl", "machines")
    #: What ``machines`` says of the processes before a checkpoint that did not record them.
    UNRECORDED = "unrecorded"

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in state or f.name not in self.ADDED_LATER:
                setattr(self, f.name, state[f.name])
        if "machines" not in state and self.step > 0:
            self.machines = [self.UNRECORDED]

    def note_machine(self, label: str) -> None:
        """This process trains the run on ``label``'s machine (kept unless the last)."""
        if not self.machines or self.machines[-1] != label:
            self.machines.append(label)

    def start_epoch(self) -> None:
        self.epoch_nll, self.epoch_tokens, self.epoch_seconds = 0.0, 0, 0.0

    def add_step(self, tokens: int, rows: int) -> None:
        """One optimizer step over ``rows`` rows of the (T, B) training data; its NLL and
        time arrive with :meth:`add_totals` when the device's sums are read."""
        self.step += 1
        self.position += rows
        self.epoch_tokens += tokens
        self.train_tokens += tokens

    def add_totals(self, nll_sum: float, seconds: float) -> None:
        """The summed NLL of the steps since the last read, and their wall time."""
        self.epoch_nll += nll_sum
        self.epoch_seconds += seconds
        self.train_seconds += seconds

    def end_epoch(self, val_ppl: float) -> bool:
        """Count the epoch; True when its validation is the best so far."""
        self.epochs_done += 1
        self.position = 0
        self.last_val_ppl = val_ppl
        if val_ppl < self.best_val_ppl:
            self.best_val_ppl, self.best_epoch = val_ppl, self.epochs_done
            return True
        return False

    @property
    def epoch_ppl(self) -> float:
        return math.exp(min(self.epoch_nll / max(self.epoch_tokens, 1), 700.0))


#: The largest NLL counted finite: exp(NLL), the perplexity, must fit in float64
#: (exp(709.78...) is its largest). Exact in float32, the NLL's dtype under every
#: precision, so the step's test on the device (rnnreg/training/step.py) and
#: :meth:`StepTotals.read` on the host agree on every value.
NLL_LIMIT = 709.75


def finite_step(nll: float, grad_norm: float) -> bool:
    """Whether a step was finite: NLL ≤ :data:`NLL_LIMIT` and a finite gradient norm."""
    return nll <= NLL_LIMIT and math.isfinite(grad_norm)


class StepTotals:
    """What the steps since the last read add up to, without an operator per step: each
    step's NLL and gradient norm stay on the device as they are (0-dim tensors, kept by
    reference), and :meth:`read` stacks them and reads them once. Summed in float64 on the
    host, with the first step that was not finite (:func:`finite_step`). Every
    :data:`HELD` steps without a read they are read early (one synchronisation), so a long
    log interval holds a bounded number of them."""

    HELD = 4096

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.held: list[torch.Tensor] = []  # NLL, gradient norm, NLL, ...
        self.step_tokens: list[tuple[int, int]] = []  # (step, tokens) of each held step
        self.nll_sum, self.grad_norm_sum = 0.0, 0.0
        self.first_bad: int | None = None
        self.steps, self.tokens = 0, 0

    def add(self, nll: torch.Tensor, grad_norm: torch.Tensor, step: int, tokens: int) -> None:
        """Step ``step``'s token-mean NLL over ``tokens`` tokens and its gradient norm,
        both without a graph."""
        self.held += (nll, grad_norm)
        self.step_tokens.append((step, tokens))
        self.steps += 1
        self.tokens += tokens
        if len(self.step_tokens) >= self.HELD:
            self._fold()

    def _fold(self) -> None:
        """Read the held values (one synchronisation) into the sums."""
        if not self.held:
            return
        values = torch.stack(self.held).double().tolist()
        for (step, tokens), nll, norm in zip(
            self.step_tokens, values[::2], values[1::2], strict=True
        ):
            self.nll_sum += nll * tokens
            self.grad_norm_sum += norm
            if self.first_bad is None and not finite_step(nll, norm):
                self.first_bad = step
        self.held, self.step_tokens = [], []

    def read_into(self, progress: TrainingProgress, meter: Any, seconds: float) -> int | None:
        """Read the sums (one synchronisation) into ``progress`` and the interval's
        ``meter`` (an :class:`~rnnreg.records.recorder.IntervalMeter`), the steps having
        taken ``seconds``; return the first non-finite step, or None."""
        if self.steps == 0:
            return None
        nll, grad_norm, bad_step, steps, tokens = self.read()
        progress.add_totals(nll, seconds)
        meter.add(nll, tokens, steps, grad_norm)
        return bad_step

    def read(self) -> tuple[float, float, int | None, int, int]:
        """(NLL sum, gradient-norm sum, first non-finite step or None, steps, tokens), and
        start over."""
        self._fold()
        out = (self.nll_sum, self.grad_norm_sum, self.first_bad, self.steps, self.tokens)
        self.reset()
        return out
