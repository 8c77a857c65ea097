"""What a run is made of and has done so far, and how a stretch of training ended.

A checkpoint (``checkpoints/last.pt``) holds :class:`TrainedParts`' state (weights,
optimizer, schedule, averaging, random generators), the :class:`TrainingProgress` fields
(flat), the hidden state and the resolved config; :mod:`rnnreg.resume` says when it may be
resumed. ``summary.json`` is :func:`run_summary`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from rnnreg import RnnregError
from rnnreg.config import RunConfig, as_plain_dict
from rnnreg.model import LanguageModel, count_parameters
from rnnreg.optim import EpochSchedule, NonMonotoneAveraging, build_optimizer
from rnnreg.records import BEST, load_checkpoint
from rnnreg.runtime import cpu_model, device_name, rng_state, set_rng_state

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """How a stretch of training ended."""

    done = "done"  # the epoch ran to its end
    max_steps = "max_steps"  # trainer.max_steps reached
    stopped = "stopped"  # a signal (SIGINT, SIGTERM, SLURM's preemption)
    diverged = "diverged"  # a non-finite loss


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

    #: Fields that checkpoints written before they existed lack (their default is used).
    ADDED_LATER = ("last_val_ppl",)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in state or f.name not in self.ADDED_LATER:
                setattr(self, f.name, state[f.name])

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


class StepTotals:
    """What the steps since the last read add up to, kept on the device so that a step
    never waits for it: the summed NLL, the summed gradient norm, and the first step whose
    loss or gradient was not finite (0: none). :meth:`read` synchronises once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.nll, self.grad_norm = zero, zero.clone()
        self.bad_step = torch.zeros((), dtype=torch.int64, device=self.device)
        self.steps, self.tokens = 0, 0

    def add(
        self,
        nll_sum: torch.Tensor,
        grad_norm: torch.Tensor,
        finite: torch.Tensor,
        step: int,
        tokens: int,
    ) -> None:
        self.nll = self.nll + nll_sum.detach().double()
        self.grad_norm = self.grad_norm + grad_norm.detach().double()
        first = (self.bad_step == 0) & ~finite
        self.bad_step = torch.where(first, step, self.bad_step)
        self.steps += 1
        self.tokens += tokens

    def read(self) -> tuple[float, float, int | None, int, int]:
        """(NLL sum, gradient-norm sum, first non-finite step or None, steps, tokens), and
        start over."""
        nll, grad_norm, bad = torch.stack(
            (self.nll, self.grad_norm, self.bad_step.double())
        ).tolist()
        steps, tokens = self.steps, self.tokens
        self.reset()
        return nll, grad_norm, int(bad) or None, steps, tokens


@dataclass
class TrainedParts:
    """What a checkpoint holds besides the progress: the weights, the optimizer and its
    schedule and averaging, and every random generator."""

    model: LanguageModel
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    averaging: NonMonotoneAveraging
    length_rng: random.Random

    @classmethod
    def build(cls, run: RunConfig, vocab_size: int, device: torch.device) -> TrainedParts:
        """A freshly initialised model (from the current seed) and its optimizer."""
        model_cfg = run.model
        if model_cfg.compile_block is None:  # one compiled block per training window
            model_cfg = dataclasses.replace(model_cfg, compile_block=run.trainer.bptt)
        model = LanguageModel(vocab_size, model_cfg, run.variant, run.trainer.precision)
        model = model.to(device)
        optimizer, schedule = build_optimizer(run.optim, model.parameters())
        averaging = NonMonotoneAveraging(run.optim.nonmono)
        return cls(model, optimizer, schedule, averaging, random.Random(run.seed))

    @property
    def device(self) -> torch.device:
        return self.model.decoder.weight.device

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "averaging": self.averaging.state_dict(),
            "rng": rng_state(self.device),
            "length_rng": self.length_rng.getstate(),
        }

    def load_state_dict(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore a checkpoint loaded on the CPU (:func:`rnnreg.resume.load_resumable`):
        ``load_state_dict`` copies each tensor onto the device of what it fills."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.averaging.load_state_dict(ckpt["averaging"], self.model)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RnnregError(
                f"checkpoint {path} does not fit this configuration ({str(exc).splitlines()[0]}); "
                "resume with the run's own config (see its .hydra/overrides.yaml)"
            ) from exc
        if not set_rng_state(ckpt["rng"], self.device):
            log.warning(
                "%s was written on %s and resumes on %s: the random streams (dropout masks) "
                "differ from here on, so the run will not repeat an uninterrupted one exactly",
                *(path, ckpt["rng"].get("device", "cpu"), self.device.type),
            )
        self.length_rng.setstate(ckpt["length_rng"])

    def start_from_best(self, init_from: str) -> None:
        """A fine-tuning stage: the best weights of the run ``init_from`` (a run directory
        or a ``.pt`` file), averaged from the first step (AWD-LSTM)."""
        source = Path(init_from).expanduser()
        path = source if source.suffix == ".pt" else source / "checkpoints" / BEST
        ckpt = load_checkpoint(path)  # on the CPU; load_state_dict copies onto the device
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise RnnregError(
                f"{path} does not fit this model ({str(exc).splitlines()[0]}); fine-tune with "
                "the same model and dataset as the trained run"
            ) from exc
        self.averaging.start(self.model, epoch=0)
        log.info("fine-tuning from %s (its epoch %s)", path, ckpt.get("epoch"))


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
        **facts,
        "config": as_plain_dict(run),
    }
