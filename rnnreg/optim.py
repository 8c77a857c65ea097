"""Optimizers and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rnnreg.config import OptimConfig, Schedule


class StepDecay:
    """Zaremba's schedule as a factor of the base rate, for ``LambdaLR``.

        lr_e = lr / lr_decay_factor ^ max(0, e - decay_after_epoch),  e = 1, 2, ...

    ``LambdaLR`` calls it with the number of finished epochs ``k = e - 1``. A class,
    not a lambda, so the scheduler's ``state_dict`` carries it.
    """

    def __init__(self, lr_decay_factor: float, decay_after_epoch: int) -> None:
        self.lr_decay_factor = lr_decay_factor
        self.decay_after_epoch = decay_after_epoch

    def __call__(self, finished_epochs: int) -> float:
        return self.lr_decay_factor ** -max(0, finished_epochs + 1 - self.decay_after_epoch)


class EpochSchedule:
    """The learning rate between epochs, stepped once per epoch after validation.

    ``step``: :class:`StepDecay`. ``plateau``: lr /= lr_decay_factor whenever the
    validation loss has not improved for more than ``plateau_patience`` epochs
    (Semeniuta et al.'s "divided by 1.5 when validation stalls").
    """

    def __init__(self, cfg: OptimConfig, optimizer: torch.optim.Optimizer) -> None:
        self.kind = cfg.schedule
        self.inner: Any
        if self.kind is Schedule.plateau:
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=1.0 / cfg.lr_decay_factor,
                patience=cfg.plateau_patience,
                threshold=0.0,
            )
        else:
            self.inner = torch.optim.lr_scheduler.LambdaLR(
                optimizer, StepDecay(cfg.lr_decay_factor, cfg.decay_after_epoch)
            )

    def step(self, val_loss: float) -> None:
        if self.kind is Schedule.plateau:
            self.inner.step(val_loss)
        else:
            self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def build_optimizer(
    cfg: OptimConfig, parameters: Iterable[torch.nn.Parameter]
) -> tuple[torch.optim.Optimizer, EpochSchedule]:
    """Plain SGD (with ``weight_decay`` at every step) and its per-epoch schedule."""
    optimizer = torch.optim.SGD(list(parameters), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, EpochSchedule(cfg, optimizer)
