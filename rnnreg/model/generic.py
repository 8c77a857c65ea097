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

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
import torch._dynamo

from rnnreg.model.recurrence import _own_copy, activate, block_lengths, shape_hints
from rnnreg.model.rule import Masks, Rule

log = logging.getLogger(__name__)


def _at(mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """The mask of step ``t``: a time-constant mask (leading 1) is the same at every step."""
    if mask is None:
        return None
    return mask[t] if mask.size(0) > 1 else mask[0]


def preactivations(gx_t: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor) -> tuple:
    """(a_i, a_f, a_g, a_o), each (B, H): gx_t + U h, or per gate k, gx_t,k + U_k h_k when
    ``h`` is (4, B, H) (``gx_t`` then gate-major (4, B, H))."""
    if h.dim() == 3:
        hidden = h.size(-1)
        u_gates = weight_hh.view(4, hidden, hidden).transpose(1, 2)
        return torch.baddbmm(gx_t, h, u_gates).unbind(0)
    return torch.addmm(gx_t, h, weight_hh.t()).chunk(4, dim=1)


def generic_steps(
    rule: Rule,
    names: tuple[str, ...],
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
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


#: Compiled block functions per (rule key, names, block length), with their plain copies.
_COMPILED: dict[Hashable, tuple[Callable[..., Any], Callable[..., Any]]] = {}


class GenericRecurrence:
    """:func:`generic_steps` over a window, compiled block by block when ``compile_options``
    is a dict, eager (one piece) when None. Falls back to eager, with a warning, when the
    compiler hits its recompile limit (:attr:`mode`)."""

    def __init__(
        self,
        rule: Rule,
        compile_options: dict[str, Any] | None = None,
        key: Hashable = None,
        block: int = 35,
    ) -> None:
        self.rule = rule
        self.blocks = block_lengths(block)
        self.compiled = compile_options is not None
        self.options = dict(compile_options or {})
        self.key = ("generic", rule.key, key, tuple(sorted(self.options.items())))
        self.cudagraphs = self.options.get("mode") == "reduce-overhead"

    @property
    def mode(self) -> str:
        return "compiled" if self.compiled else "eager"

    @property
    def compilations(self) -> int:
        from torch._dynamo.eval_frame import _get_total_cache_entry_count

        copies = [copy for (key, *_), (_, copy) in _COMPILED.items() if key == self.key]
        return sum(_get_total_cache_entry_count(fn.__code__) for fn in copies)

    def spans(self, steps: int) -> list[tuple[int, int]]:
        """The (first, stop) steps of each compiled block of a window of ``steps``."""
        if not self.compiled:
            return [(0, steps)]
        spans, first = [], 0
        for length in self.blocks:
            while steps - first >= length:
                spans.append((first, first + length))
                first += length
        return spans

    def _block(self, names: tuple[str, ...], length: int) -> Callable[..., Any]:
        cache_key = (self.key, names, length)
        if cache_key not in _COMPILED:
            copy = _own_copy(generic_steps)
            _COMPILED[cache_key] = (torch.compile(copy, **self.options), copy)
        return _COMPILED[cache_key][0]

    def _run(self, names: tuple[str, ...], gx: torch.Tensor, *rest: Any) -> tuple:
        if not self.compiled:
            return generic_steps(self.rule, names, gx, *rest)
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                result = self._block(names, gx.size(0))(self.rule, names, gx, *rest)
            return tuple(t.clone() for t in result) if self.cudagraphs else result
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            log.warning(
                "torch.compile hit its recompile limit for this layer's generic loop; it now "
                "runs eagerly (slower; summary field loop_mode=eager)"
            )
            self.compiled = self.cudagraphs = False
            return generic_steps(self.rule, names, gx, *rest)

    def __call__(
        self,
        gx: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        weight_hh: torch.Tensor,
        masks: Mapping[str, torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Outputs (T, B, H), h_T, c_T; differentiable in gx, h, c and ``weight_hh``."""
        names = tuple(name for name, mask in masks.items() if mask is not None)
        tensors = [masks[name] for name in names]
        pieces = []
        for first, stop in self.spans(gx.size(0)):
            part = gx if (first, stop) == (0, gx.size(0)) else gx[first:stop].clone()
            step_masks = [_steps_of(mask, first, stop) for mask in tensors]
            out, h, c = self._run(
                names,
                shape_hints(part, time_major=True),
                shape_hints(h, time_major=False),
                shape_hints(c, time_major=False),
                weight_hh,
                *step_masks,
            )
            pieces.append(out)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), h, c


def _steps_of(mask: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Steps ``first .. stop-1`` of a mask (constants: detached; a time-constant mask as is)."""
    part = mask.detach()
    if part.size(0) > 1 and not (first == 0 and stop == part.size(0)):
        part = part[first:stop].clone()
    return shape_hints(part, time_major=True)


def in_step_masks(z: Masks, hidden: set[str]) -> dict[str, torch.Tensor | None]:
    """The masks the loop takes: those not used once per window (``hidden`` names the
    masks on the input and the weights, applied before the loop)."""
    return {name: mask for name, mask in z.items() if name not in hidden}
