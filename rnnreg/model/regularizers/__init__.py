"""The shared regularizer package: one mask helper, and what the masks are applied to."""

from rnnreg.model.regularizers.dropout import ActivationDropout
from rnnreg.model.regularizers.masks import (
    Granularity,
    apply_mask,
    draw_activation_mask,
    draw_mask,
    mask_shape,
)

__all__ = [
    "ActivationDropout",
    "Granularity",
    "apply_mask",
    "draw_activation_mask",
    "draw_mask",
    "mask_shape",
]
