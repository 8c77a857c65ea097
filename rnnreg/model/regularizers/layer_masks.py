"""The masks of one LSTM layer for one forward pass, drawn with the one mask helper.

For :class:`~rnnreg.config.dropout.InStepDropout` settings, a window of T steps and
B rows, :func:`draw_layer_masks` returns every mask the layer applies (names as in the
step equations of :mod:`rnnreg.model.recurrence`):

    z_x  (T|1, 4, B|1, n)   Gal's per-gate input masks (untied only)
    z_h  (T|1, B|1, H) or (T|1, 4, B|1, H) untied; a ``batch`` z_h is a column mask on U
    z_u, z_m                 Semeniuta's update mask, Moon's memory mask
    z^c, z^h                 zoneout's keep masks (1 keeps the previous value, w.p. p)
    M    (4H, H)             U ∘ M: weight-drop times the columns of a ``batch`` z_h

Outside training (and without MC dropout) each mask is its expectation: none for a
scaled mask (E[z] = 1), ``1 - p`` for an unscaled one, ``p`` for zoneout's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnreg.config.dropout import InStepDropout
from rnnreg.model.recurrence import InStepMasks
from rnnreg.model.regularizers.masks import MCDropout, draw_mask, held_or_drawn
from rnnreg.model.rule import Units, builtin_declared, draw_declared


@dataclass
class StepMasks:
    """Masks for one forward pass, time-major and broadcastable.

    Shapes are (T|1, B|1, H) — or (T|1, 4, B|1, H) for untied gate masks — except
    ``weight_hh`` (4H, H). In tests, give them explicitly to ``LSTMLayer.forward``.
    """

    input: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    update: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    zoneout_cell: torch.Tensor | None = None
    zoneout_hidden: torch.Tensor | None = None
    weight_hh: torch.Tensor | None = None

    def in_step(self) -> InStepMasks:
        """The masks that act inside the step (what the recurrence takes)."""
        return InStepMasks(
            self.hidden, self.update, self.memory, self.zoneout_cell, self.zoneout_hidden
        )


def draw_layer_masks(
    d: InStepDropout,
    input_size: int,
    hidden_size: int,
    steps: int,
    batch: int,
    *,
    training: bool,
    mc: MCDropout | None = None,
    device: torch.device,
    dtype: torch.dtype,
    gates: int = 4,
) -> StepMasks:
    """Fresh masks for one forward pass over (steps, batch), or their expectations.

    The in-step masks are the built-in declarations (:func:`~rnnreg.model.rule.builtin_declared`)
    drawn by :func:`~rnnreg.model.rule.draw_declared`, as a plug-in's are; the weight mask
    M (weight-drop times the columns of a ``batch`` z_h) is drawn here."""
    stochastic = training or mc is not None
    held = None if mc is None else mc.held
    in_step = tuple(
        mask
        for mask in builtin_declared(d)
        if mask.units is not Units.weight_hh and not (mask.name == "hidden" and d.hidden_on_weight)
    )
    sizes = {Units.input: input_size, Units.hidden: hidden_size}
    z = draw_declared(
        in_step,
        sizes,
        steps,
        batch,
        training=training,
        mc=mc,
        device=device,
        dtype=dtype,
        gates=gates,
    )
    masks = StepMasks(
        input=z.get("input"),
        hidden=z.get("hidden"),
        update=z.get("update"),
        memory=z.get("memory"),
        zoneout_cell=z.get("zoneout_cell"),
        zoneout_hidden=z.get("zoneout_hidden"),
    )
    if stochastic:
        masks.weight_hh = held_or_drawn(
            held, "weight_hh", None, lambda: draw_weight_mask(d, hidden_size, device, dtype, gates)
        )
    elif d.hidden_on_weight and not d.scale:  # E[U ∘ M] = (1 - p) U for unscaled columns
        masks.weight_hh = torch.full((1, 1), 1.0 - d.p_hidden, device=device, dtype=dtype)
    return masks


def draw_weight_mask(
    d: InStepDropout,
    hidden_size: int,
    device: torch.device,
    dtype: torch.dtype,
    gates: int = 4,
) -> torch.Tensor | None:
    """M for U ∘ M (U is gates·H x H: 4H for the LSTM, 3H for the GRU): the weight-drop
    mask times the column mask of a ``batch`` z_h.

    ``(h ∘ z) U_kᵀ = h (U_k diag(z))ᵀ``: a z_h shared by every row and step of the
    batch is the same as dropping columns of U (per gate block U_k when untied).
    """
    mask = None
    if d.p_weight > 0:
        shape = (gates * hidden_size, hidden_size)
        mask = draw_mask(shape, d.p_weight, device=device, dtype=dtype)
    if d.hidden_on_weight:
        drawn, size = (gates if d.untied else 1), hidden_size
        z_h = draw_mask((drawn, 1, size), d.p_hidden, scale=d.scale, device=device, dtype=dtype)
        columns = z_h.expand(gates, size, size).reshape(gates * size, size)
        mask = columns if mask is None else mask * columns
    return mask
