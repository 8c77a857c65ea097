"""Dropout on activations outside the recurrence (Zaremba's, locked/variational)."""

from __future__ import annotations

import torch
from torch import nn

from rnnreg.regularizers.masks import (
    Granularity,
    HeldMasks,
    apply_mask,
    draw_activation_mask,
    held_or_drawn,
)


class ActivationDropout(nn.Module):
    """``y = x ∘ z`` during training, ``y = x ∘ E[z]`` in ``eval()``; ``x`` is (T, B, m).

    ``E[z]`` is 1 with inverted scaling, ``1 - p`` without. ``mc_dropout = True`` keeps
    the masks on outside training (MC-dropout evaluation). With ``granularity=step`` this
    is Zaremba et al.'s non-recurrent dropout; with ``sequence`` it is the locked
    (variational) dropout of Gal & Ghahramani and AWD-LSTM.
    """

    def __init__(self, p: float, granularity: Granularity | str, scale: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"a drop probability must lie in [0, 1), got {p}")
        self.p = p
        self.granularity = Granularity(granularity)
        self.scale = scale
        self.mc_dropout = False
        #: Independent copies in the batch (MC dropout): ``batch`` masks per copy.
        self.replicas = 1
        #: Time-constant masks kept across forward passes (MC dropout, one draw per pass).
        self.held: HeldMasks | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if (self.training or self.mc_dropout) and mask is None and self.held is not None:
            if self.p == 0.0:
                return x
            mask = held_or_drawn(
                self.held,
                "activation",
                self.granularity,
                lambda: draw_activation_mask(
                    x.shape,
                    self.p,
                    self.granularity,
                    replicas=self.replicas,
                    scale=self.scale,
                    device=x.device,
                    dtype=x.dtype,
                ),
            )
        if self.training or self.mc_dropout:
            return apply_mask(
                x, self.p, self.granularity, scale=self.scale, replicas=self.replicas, mask=mask
            )
        if not self.scale and self.p > 0:
            return x * (1.0 - self.p)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}, granularity={self.granularity.value}, scale={self.scale}"
