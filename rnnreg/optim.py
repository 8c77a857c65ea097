"""Optimizers and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rnnreg.config import OptimConfig


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


def build_optimizer(
    cfg: OptimConfig, parameters: Iterable[torch.nn.Parameter]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Plain SGD and its per-epoch schedule (stepped once at the end of every epoch)."""
    optimizer = torch.optim.SGD(list(parameters), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepDecay(cfg.lr_decay_factor, cfg.decay_after_epoch)
    )
    return optimizer, schedule
