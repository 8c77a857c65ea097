"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from rnnreg.config.schema import OptimConfig, Schedule
from rnnreg.core.runtime import constant


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


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """‖g‖₂ = ‖(‖g_1‖₂, …, ‖g_n‖₂)‖₂ over the parameters' gradients: the total of
    ``torch.nn.utils.clip_grad_norm_``, with its operators (one ``_foreach_norm``, a stack
    and a norm) and none of its per-parameter ``to`` calls."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def clip_divisor(grad_norm: torch.Tensor, max_norm: float) -> torch.Tensor | None:
    """d = max(1, (‖g‖ + 10⁻⁶) / c), so that g / d is ``clip_grad_norm_``'s
    g · min(1, c / (‖g‖ + 10⁻⁶)) within a float rounding; None when c = ∞ (no clip).
    Fused SGD divides by it as it reads the gradient (its ``grad_scale``), so the clip
    costs no pass over the gradients."""
    if math.isinf(max_norm):
        return None
    offset = constant(1e-6 / max_norm, grad_norm)  # d = 10⁻⁶/c + ‖g‖/c: two operators
    return torch.add(offset, grad_norm, alpha=1.0 / max_norm).clamp_min_(1.0)


class FiniteSGD(torch.optim.SGD):
    """Plain SGD with the clip's divisor d, whose step is skipped, on the device, when it
    is not finite:

        p ← p − s η (g / d + λ p)   if ``finite``,   else p

    with s the step's scale of the learning rate (AWD-LSTM's variable BPTT scales it by
    L / bptt) and λ the weight decay. ``finite`` is a 0-dim bool tensor computed on the
    device (rnnreg/training/step.py). The update is ``torch.optim.SGD(fused=True)``: one
    fused operator for every parameter, whatever their number, which skips the step
    itself when its ``found_inf`` (the attribute ``GradScaler`` sets) holds 1.0. Nothing
    is read back to the host, so the trainer never waits for the GPU, and a step with a
    non-finite loss or gradient leaves every weight as it was. The divisor d is its
    ``grad_scale`` (the other attribute ``GradScaler`` sets; :func:`clip_divisor`).
    The learning rate stays a Python float: a tensor one costs the CPU fused path an
    ``aten::item`` per step (docs/performance.md).

    Its state_dict is SGD's; one written before (only ``lr`` and ``weight_decay`` in its
    groups) loads with SGD's other settings filled in.
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)

    def finite_step(
        self,
        *,
        lr_scale: float = 1.0,
        finite: torch.Tensor | None = None,
        found_inf: torch.Tensor | None = None,
        grad_divisor: torch.Tensor | None = None,
    ) -> None:
        """The update, scaled by ``lr_scale``, with the gradients divided by
        ``grad_divisor`` (None: 1); skipped when ``finite`` (bool) is False or
        ``found_inf`` (float, its complement, what the trainer passes) is 1.0.

        SGD's own ``step`` runs it, once: its step hooks see the scaled learning rate (an
        override calling ``super().step()`` would run them twice once plain SGD's step is
        hooked too)."""
        if found_inf is None and finite is not None:
            found_inf = torch.logical_not(finite).float()
        self.found_inf = found_inf
        self.grad_scale = grad_divisor
        if lr_scale != 1.0:
            for group in self.param_groups:
                group["lr"] *= lr_scale
        try:
            self.step()
        finally:
            self.found_inf = self.grad_scale = None  # a plain step() after it reads neither
            if lr_scale != 1.0:
                for group in self.param_groups:
                    group["lr"] /= lr_scale

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """SGD's, with the settings a checkpoint of the older FiniteSGD lacks taken from
        this optimizer's own defaults (momentum 0, fused)."""
        groups = [{**self.defaults, **group} for group in state_dict["param_groups"]]
        super().load_state_dict({**state_dict, "param_groups": groups})


def build_optimizer(
    cfg: OptimConfig, parameters: Iterable[torch.nn.Parameter]
) -> tuple[FiniteSGD, EpochSchedule]:
    """Plain SGD (with ``weight_decay`` at every step) and its per-epoch schedule."""
    optimizer = FiniteSGD(list(parameters), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, EpochSchedule(cfg, optimizer)
