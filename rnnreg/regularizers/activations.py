"""Penalties on activations: AR and TAR (Merity, Keskar, Socher 2017)."""

from __future__ import annotations

import torch


def activation_regularization(
    last: torch.Tensor, last_dropped: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """AR + TAR on the last layer's output h_t (T, B, H):

    AR  = α · mean((h_t ∘ z_output)²)      the dropped output, over t, b, units
    TAR = β · mean((h_t - h_{t-1})²)        the undropped output, over t >= 2, b, units
    """
    total = last.new_zeros(())
    if alpha:
        total = total + alpha * last_dropped.pow(2).mean()
    if beta and last.size(0) > 1:
        total = total + beta * (last[1:] - last[:-1]).pow(2).mean()
    return total
