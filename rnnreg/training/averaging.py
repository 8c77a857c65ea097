"""NT-ASGD's averaging (Merity et al. 2017): when to start, and the running mean of the
iterates."""

from __future__ import annotations

from typing import Any

import torch


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

    def after_validation(
        self, val_loss: float, epoch: int, model: torch.nn.Module, finetune: bool, nt_asgd: bool
    ) -> tuple[bool, bool]:
        """(finished, switched) after a validation: a fine-tuning stage finishes when the
        loss has stalled (AWD's rule); a training stage with NT-ASGD switches to averaging
        then (:meth:`observe`); plain SGD records nothing."""
        if finetune:
            finished = self.stalled(val_loss)
            self.history.append(val_loss)
            return finished, False
        return False, nt_asgd and self.observe(val_loss, epoch, model)

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
        averaged = list(self.averaged.module.parameters())
        current = [p.detach() for p in model.parameters()]
        with torch.no_grad():
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
