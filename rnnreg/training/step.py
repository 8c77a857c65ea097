"""One training step on a BPTT window, without waiting for the device.

    loss = NLL (token mean; × L with ``loss_sum_over_time``) + AR + TAR   (rnnreg/training/loss.py)
    g    = ∇ loss,   d = max(1, (‖g‖ + 10⁻⁶) / c),   c = optim.clip_grad_norm  (global norm)
    θ    ← θ − s η (g / d + λ θ)   if NLL ≤ 709.75 and ‖g‖ is finite, else θ  (FiniteSGD)

with s = L / bptt under variable BPTT (AWD-LSTM), else 1. Nothing is read back to the
host: the window's NLL and gradient norm stay on the device with
:class:`~rnnreg.training.state.StepTotals`, which the trainer reads at each log interval,
before each checkpoint and at each epoch's end. The step's operators are counted in
docs/performance.md ("Operators per step").
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from rnnreg.config.schema import RunConfig
from rnnreg.core.testhooks import inject_nan, pause_point
from rnnreg.model.lm import State, detach_state
from rnnreg.training.loss import window_loss
from rnnreg.training.optim import clip_divisor, gradient_norm
from rnnreg.training.parts import TrainedParts
from rnnreg.training.state import NLL_LIMIT, StepTotals


class WindowStep:
    """The step of a run, with the sums it keeps on the device between reads."""

    def __init__(self, run: RunConfig, parts: TrainedParts, device: torch.device) -> None:
        self.run, self.parts = run, parts
        self.totals = StepTotals(device)
        self.penalty_terms: list[torch.Tensor] = []  # AR, TAR, AR, ... since the last log
        self.found_inf = torch.zeros((), device=device)  # this step's, for fused SGD

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State, step: int
    ) -> State:
        """Optimizer step number ``step`` on the window (inputs, targets) from ``state``;
        returns the state after it, detached."""
        run, model, optimizer = self.run, self.parts.model, self.parts.optimizer
        w = window_loss(
            model, inputs, targets, state, run.variant, run.optim.loss_sum_over_time, run.objective
        )
        if inject_nan(run.seed, step):
            w = replace(w, total=w.total * math.nan, nll=w.nll * math.nan)
        if w.regularizers:
            self.penalty_terms += (r.detach() for r in w.regularizers)
        optimizer.zero_grad(set_to_none=True)
        w.backward()
        pause_point("step")  # inside a step: gradients computed, weights not yet updated
        grad_norm = gradient_norm(model.parameters())
        divisor = clip_divisor(grad_norm, run.optim.clip_grad_norm or math.inf)
        scale = inputs.size(0) / run.trainer.bptt if run.trainer.variable_bptt else 1.0
        nll = w.nll.detach()
        found_inf = not_finite(nll, grad_norm, out=self.found_inf)
        optimizer.finite_step(lr_scale=scale, found_inf=found_inf, grad_divisor=divisor)
        self.parts.averaging.update(model)
        self.totals.add(nll, grad_norm, step, targets.numel())
        return detach_state(w.state)

    def penalties(self, steps: int) -> dict[str, float]:
        """The mean AR and TAR since the last call (one read), for the log."""
        terms = torch.stack(self.penalty_terms).double().tolist() if self.penalty_terms else []
        self.penalty_terms = []
        ar, tar = math.fsum(terms[::2]), math.fsum(terms[1::2])
        return {"train/ar": ar / max(steps, 1), "train/tar": tar / max(steps, 1)}


def not_finite(
    nll: torch.Tensor, grad_norm: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """found_inf = 0.0 when NLL ≤ NLL_LIMIT and ‖g‖ is finite, else 1.0 (float, what
    fused SGD reads; :func:`~rnnreg.training.state.finite_step` on the host), in three
    operators: NLL + 0 · ‖g‖ is NaN when ‖g‖ is not finite, and NaN ≤ x is false."""
    both = torch.add(nll, grad_norm, alpha=0)
    if out is None:
        out = torch.empty((), dtype=grad_norm.dtype, device=grad_norm.device)
    return torch.logical_not(both <= NLL_LIMIT, out=out)
