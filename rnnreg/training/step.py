"""One training step on a BPTT window, without waiting for the device.

    loss = NLL (token mean; × L with ``loss_sum_over_time``) + AR + TAR   (rnnreg/training/loss.py)
    g    = clip(∇ loss, optim.clip_grad_norm)                               (global norm)
    θ    ← θ − s η (g + λ θ)   if exp(NLL) and ‖∇ loss‖ are finite, else θ  (FiniteSGD)

with s = L / bptt under variable BPTT (AWD-LSTM), else 1. Nothing is read back to the
host: the window's summed NLL, its gradient norm and whether it was finite go to
:class:`~rnnreg.training.state.StepTotals` on the device, which the trainer reads at each
log interval, before each checkpoint and at each epoch's end.
"""

from __future__ import annotations

import math

import torch

from rnnreg.config.schema import RunConfig
from rnnreg.core.testhooks import inject_nan, pause_point
from rnnreg.model.lm import State, detach_state
from rnnreg.training.loss import window_loss
from rnnreg.training.parts import TrainedParts
from rnnreg.training.state import StepTotals


class WindowStep:
    """The step of a run, with the sums it keeps on the device between reads."""

    def __init__(self, run: RunConfig, parts: TrainedParts, device: torch.device) -> None:
        self.run, self.parts = run, parts
        self.totals = StepTotals(device)
        self.penalty_sum = torch.zeros(2, device=device)  # AR, TAR since the last log

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: State, step: int
    ) -> State:
        """Optimizer step number ``step`` on the window (inputs, targets) from ``state``;
        returns the state after it, detached."""
        run, model, optimizer = self.run, self.parts.model, self.parts.optimizer
        w = window_loss(
            model, inputs, targets, state, run.variant, run.optim.loss_sum_over_time, run.objective
        )
        loss, nll = w.loss, w.nll
        if inject_nan(run.seed, step):
            loss, nll = loss * math.nan, nll * math.nan
        if w.penalties is not None:
            self.penalty_sum += w.penalties
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pause_point("step")  # inside a step: gradients computed, weights not yet updated
        max_norm = run.optim.clip_grad_norm or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        # finite: a perplexity exp(NLL) that fp64 can hold (NLL < 709.8) and a finite norm;
        # found_inf is its float complement, which the fused SGD step reads (FiniteSGD)
        finite = torch.isfinite(nll.detach().double().exp()) & torch.isfinite(grad_norm)
        found_inf = torch.logical_not(finite).float()
        scale = inputs.size(0) / run.trainer.bptt if run.trainer.variable_bptt else 1.0
        optimizer.step(lr_scale=scale, found_inf=found_inf)
        self.parts.averaging.update(model)
        tokens = targets.numel()
        self.totals.add(nll.detach() * tokens, grad_norm, found_inf, step, tokens)
        return detach_state(w.state)

    def penalties(self, steps: int) -> dict[str, float]:
        """The mean AR and TAR since the last call (one read), for the log."""
        ar, tar = (self.penalty_sum / max(steps, 1)).tolist()
        self.penalty_sum.zero_()
        return {"train/ar": ar, "train/tar": tar}
