"""Dropout on activations outside the recurrence (Zaremba's, locked/variational)."""

from __future__ import annotations

import torch
from torch import nn

from rnnreg.config.dropout import check_rate
from rnnreg.model.regularizers.masks import (
    Granularity,
    MCDropout,
    apply_mask,
    draw_activation_mask,
    held_or_drawn,
)


class ActivationDropout(nn.Module):
    """``y = x ∘ z`` during training, ``y = x ∘ E[z]`` in ``eval()``; ``x`` is (T, B, m).

    ``E[z]`` is 1 with inverted scaling, ``1 - p`` without. Given ``mc`` (an
    :class:`MCDropout`), the masks stay on outside training (MC-dropout evaluation). With
    ``granularity=step`` this is Zaremba et al.'s non-recurrent dropout; with
    ``sequence`` it is the locked (variational) dropout of Gal & Ghahramani and AWD-LSTM.
    """

    def __init__(self, p: float, granularity: Granularity | str, scale: bool = True) -> None:
        super().__init__()
        check_rate(p)
        self.p = p
        self.granularity = Granularity(granularity)
        self.scale = scale

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mc: MCDropout | None = None
    ) -> torch.Tensor:
        """``mask`` replaces the random draw (tests give explicit masks this way)."""
        if not (self.training or mc is not None):
            return x * (1.0 - self.p) if not self.scale and self.p > 0 else x
        replicas = 1 if mc is None else mc.replicas
        if mask is None and self.p > 0 and mc is not None and mc.held is not None:
            mask = held_or_drawn(  # one draw for the whole stream (time-constant masks)
                mc.held,
                "activation",
                self.granularity,
                lambda: draw_activation_mask(
                    x.shape,
                    self.p,
                    self.granularity,
                    replicas=replicas,
                    scale=self.scale,
                    device=x.device,
                    dtype=x.dtype,
                ),
            )
        return apply_mask(
            x, self.p, self.granularity, scale=self.scale, replicas=replicas, mask=mask
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, granularity={self.granularity.value}, scale={self.scale}"
