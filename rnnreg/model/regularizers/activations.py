"""Penalties on activations: AR and TAR (Merity, Keskar, Socher 2017)."""

from __future__ import annotations

import torch


def activation_regularization(
    last: torch.Tensor, last_dropped: torch.Tensor, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(AR, TAR) on the last layer's output h_t (T, B, H), both added to the loss:

    AR  = α · mean((h_t ∘ z_output)²)      the dropped output, over t, b, units
    TAR = β · mean((h_t - h_{t-1})²)        the undropped output, over t >= 2, b, units
    """
    ar = alpha * last_dropped.pow(2).mean() if alpha else last.new_zeros(())
    if beta and last.size(0) > 1:
        tar = beta * (last[1:] - last[:-1]).pow(2).mean()
    else:
        tar = last.new_zeros(())
    return ar, tar
