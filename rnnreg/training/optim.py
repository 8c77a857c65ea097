"""Optimizers and learning-rate schedules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rnnreg.config.schema import OptimConfig, Schedule


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


class FiniteSGD(torch.optim.Optimizer):
    """Plain SGD whose step is skipped, on the device, when it is not finite:

        p ← p − s η (g + λ p)   if ``finite``,   else p

    with s the step's scale of the learning rate (AWD-LSTM's variable BPTT scales it by
    L / bptt) and λ the weight decay. ``finite`` is a 0-dim bool tensor computed on the
    device (rnnreg/training/trainer.py); the step reads nothing back to the host, so the trainer
    never waits for the GPU, and a step with a non-finite loss or gradient leaves every
    weight as it was. The arithmetic is ``torch.optim.SGD``'s (same ops, same order), and
    its state_dict loads SGD's (checkpoints written before this class).
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: None = None, *, lr_scale: float = 1.0, finite: torch.Tensor | None = None
    ) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if finite is not None:  # a non-finite step adds 0 · (nothing) to every weight
                grads = [torch.where(finite, g, 0.0) for g in grads]
            torch._foreach_add_(params, grads, alpha=-group["lr"] * lr_scale)


def build_optimizer(
    cfg: OptimConfig, parameters: Iterable[torch.nn.Parameter]
) -> tuple[FiniteSGD, EpochSchedule]:
    """Plain SGD (with ``weight_decay`` at every step) and its per-epoch schedule."""
    optimizer = FiniteSGD(list(parameters), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, EpochSchedule(cfg, optimizer)
