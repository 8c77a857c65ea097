"""What a checkpoint holds besides the progress: the model, its optimizer, schedule and
averaging, and every random generator."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnreg import RnnregError
from rnnreg.config.schema import RunConfig
from rnnreg.core.runtime import rng_state, set_rng_state
from rnnreg.model.lm import LanguageModel
from rnnreg.records.checkpoint import BEST, load_checkpoint
from rnnreg.training.averaging import NonMonotoneAveraging
from rnnreg.training.optim import EpochSchedule, build_optimizer

log = logging.getLogger(__name__)


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
        if run.model.vocab_size is not None and run.model.vocab_size != vocab_size:
            raise RnnregError(
                f"model.vocab_size={run.model.vocab_size} but the corpus has {vocab_size} "
                "words; remove the override"
            )
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
        """Restore a checkpoint loaded on the CPU (:func:`rnnreg.training.resume.load_resumable`):
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
