"""Dropout on activations outside the recurrence (Zaremba's, locked/variational)."""

from __future__ import annotations

import torch
from torch import nn

from rnnreg.regularizers.masks import Granularity, apply_mask


class ActivationDropout(nn.Module):
    """``y = x ∘ z`` during training, ``y = x`` in ``eval()``; ``x`` is (T, B, m).

    With ``granularity=step`` this is Zaremba et al.'s non-recurrent dropout; with
    ``sequence`` it is the locked (variational) dropout of Gal & Ghahramani / AWD-LSTM.
    """

    def __init__(self, p: float, granularity: Granularity | str, scale: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"a drop probability must lie in [0, 1), got {p}")
        self.p = p
        self.granularity = Granularity(granularity)
        self.scale = scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return x
        return apply_mask(x, self.p, self.granularity, scale=self.scale, mask=mask)

    def extra_repr(self) -> str:
        return f"p={self.p}, granularity={self.granularity.value}, scale={self.scale}"
