"""Masks on weights: DropConnect on a hidden-to-hidden matrix (weight-drop)."""

from __future__ import annotations

import torch

from rnnreg.model.regularizers.masks import draw_mask


def drop_weight(
    weight: torch.Tensor, p: float, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``U' = U ∘ M``: DropConnect with one mask for the forward pass (granularity ``batch``).

    ``M`` is 0 with probability ``p``, else ``1/(1-p)``. The result is a new tensor: the
    parameter ``U`` is never modified, gradients reach it through the product (zero where
    dropped), and an optimizer step on ``U`` is what the next forward pass sees.
    """
    if mask is None:
        if p == 0.0:
            return weight
        mask = draw_mask(weight.shape, p, device=weight.device, dtype=weight.dtype)
    return weight * mask
