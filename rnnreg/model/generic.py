"""The generic loop path: any :class:`~rnnreg.model.rule.Rule`, differentiated by autograd.

For t = 1..T, from gx = W x' + b (all steps, one product before the loop):

    h'       = rule.pre_hidden(h_{t-1}, z_t)
    a_t      = gx_t + U' h'                     (per gate when h' is (4, B, H))
    h_t, c_t = rule.post(activate(a_t), h_{t-1}, c_{t-1}, z_t)

Unlike :class:`~rnnreg.model.recurrence.Recurrence`, nothing is detached: autograd reaches
gx, h_0, c_0 and U through every step (``torch.autograd.gradcheck`` in
tests/test_generic.py checks each). Compiled, a window runs as the same blocks as the
hand-written path (:func:`~rnnreg.model.recurrence.block_lengths`), carrying (h, c) from
block to block, one ``torch.compile`` per (rule configuration, block length): dynamo
traces the rule's plain tensor code and AOTAutograd derives its backward.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

from rnnreg.model.recurrence import Recurrence, _at, activate, shape_hints
from rnnreg.model.rule import Rule


def preactivations(gx_t: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor) -> tuple:
    """(a_i, a_f, a_g, a_o), each (B, H): gx_t + U h, or per gate k, gx_t,k + U_k h_k when
    ``h`` is (4, B, H) (``gx_t`` then gate-major (4, B, H))."""
    if h.dim() == 3:
        hidden = h.size(-1)
        u_gates = weight_hh.view(4, hidden, hidden).transpose(1, 2)
        return torch.baddbmm(gx_t, h, u_gates).unbind(0)
    return torch.addmm(gx_t, h, weight_hh.t()).chunk(4, dim=1)


def generic_steps(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    rule: Rule,
    names: tuple[str, ...],
    *masks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop over ``gx`` (T, B, 4H), or (T, 4, B, H) gate-major, from (h, c); ``masks``
    are the in-step masks, time-major, named by ``names``. Returns outputs (T, B, H), h_T,
    c_T."""
    outputs = []
    for t in range(gx.size(0)):
        z = {name: _at(mask, t) for name, mask in zip(names, masks, strict=True)}
        a = preactivations(gx[t], rule.pre_hidden(h, z), weight_hh)
        h, c = rule.post(activate(*a), h, c, z)
        outputs.append(h)
    return torch.stack(outputs), h, c


class GenericRecurrence(Recurrence):
    """:func:`generic_steps` over a window, differentiated by autograd: the blocks, the
    compiled-function cache and the eager fallback of :class:`Recurrence`, one compiled
    copy per (rule configuration, masks present, block length)."""

    def __init__(
        self,
        rule: Rule,
        compile_options: dict[str, Any] | None = None,
        key: Hashable = None,
        block: int = 35,
    ) -> None:
        super().__init__(compile_options, key=("generic", rule.key, key), block=block)
        self.rule = rule

    def _function(self, which: Hashable) -> Callable[..., Any]:
        return generic_steps

    def __call__(  # type: ignore[override]
        self,
        gx: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        weight_hh: torch.Tensor,
        masks: Mapping[str, torch.Tensor | None],
        *cell_inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outputs (T, B, H), h_T, c_T; differentiable in gx, h, c, ``weight_hh`` and
        ``cell_inputs`` (parameters the cell's step takes after U: the GRU's b_hh)."""
        names = tuple(name for name, mask in masks.items() if mask is not None)
        tensors = [masks[name] for name in names]
        pieces = []
        for first, stop in self.spans(gx.size(0)):
            part = gx if (first, stop) == (0, gx.size(0)) else gx[first:stop].clone()
            out, h, c = self._run(
                ("generic", names),
                shape_hints(part, time_major=True),
                shape_hints(h, time_major=False),
                shape_hints(c, time_major=False),
                weight_hh,
                *cell_inputs,
                self.rule,
                names,
                *(_steps_of(mask, first, stop) for mask in tensors),
            )
            pieces.append(out)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), h, c

    infer = __call__  # evaluation: the same loop, no graph under torch.no_grad()


def _steps_of(mask: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Steps ``first .. stop-1`` of a mask (constants: detached; a time-constant mask as is)."""
    part = mask.detach()
    if part.size(0) > 1 and not (first == 0 and stop == part.size(0)):
        part = part[first:stop].clone()
    return shape_hints(part, time_major=True)
