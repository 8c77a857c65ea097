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


class FiniteSGD(torch.optim.Optimizer):
    """Plain SGD whose step is skipped, on the device, when it is not finite:

        p ← p − s η (g + λ p)   if ``finite``,   else p

    with s the step's scale of the learning rate (AWD-LSTM's variable BPTT scales it by
    L / bptt) and λ the weight decay. ``finite`` is a 0-dim bool tensor computed on the
    device (rnnreg/trainer.py); the step reads nothing back to the host, so the trainer
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


class NonMonotoneAveraging:
    """NT-ASGD (Merity et al. 2017): when to start averaging, and the averaged weights.

    After each validation, with L the list of earlier validation losses, averaging starts
    when ``len(L) > nonmono`` and ``val_loss > min(L[:-nonmono])``. From then on the
    weights evaluated and saved are the running mean of the iterates after each step,

        w̄_n = w̄_{n-1} + (w_n - w̄_{n-1}) / n,

    which is ``torch.optim.ASGD`` with t0 = 0 and λ = 0 on top of SGD: kept as a
    separate copy (``AveragedModel``), so no parameter is ever swapped in place.
    """

    def __init__(self, nonmono: int) -> None:
        self.nonmono = nonmono
        self.history: list[float] = []
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        self.switch_epoch: int | None = None
        self.count = 0  # steps folded into the average

    @property
    def active(self) -> bool:
        return self.averaged is not None

    def stalled(self, val_loss: float) -> bool:
        """The non-monotone criterion on ``val_loss`` against the history so far."""
        return len(self.history) > self.nonmono and val_loss > min(self.history[: -self.nonmono])

    def observe(self, val_loss: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record a validation loss; start averaging if the criterion says so."""
        switch = not self.active and self.stalled(val_loss)
        self.history.append(val_loss)
        if switch:
            self.start(model, epoch)
        return switch

    def start(self, model: torch.nn.Module, epoch: int) -> None:
        self.averaged = torch.optim.swa_utils.AveragedModel(model)
        self.switch_epoch = epoch
        self.count = 0

    def update(self, model: torch.nn.Module) -> None:
        """Fold the weights after an optimizer step into the average: the first copied,
        then w̄ ← w̄ + (w − w̄)/(n + 1) as one foreach lerp. The count n is kept on the host
        (``AveragedModel.update_parameters`` reads its tensor count back at every step)
        and mirrored into the container's ``n_averaged`` for its state_dict."""
        if self.averaged is None:
            return
        averaged = [p.detach() for p in self.averaged.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if self.count == 0:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 / (self.count + 1))
        self.count += 1
        self.averaged.n_averaged.fill_(self.count)

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The weights to evaluate and save: the average once averaging has begun."""
        return self.averaged.module if self.averaged is not None else model

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "switch_epoch": self.switch_epoch,
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> None:
        self.history = list(state["history"])
        self.switch_epoch = state["switch_epoch"]
        self.averaged = None
        if state["averaged"] is not None:
            self.averaged = torch.optim.swa_utils.AveragedModel(model)
            self.averaged.load_state_dict(state["averaged"])
            self.count = int(self.averaged.n_averaged)
