"""The GRU layer: ``nn.GRU``'s parameters, gate order (r, z, n) and update, two ways to run it.

At step t, with x'_k = x_t ∘ z_x,k and h'_k = h_{t-1} ∘ z_h,k (Gal's masks per gate k
when untied; tied, z_x is applied outside the layer and one z_h serves the three gates):

    r_t  = σ(W_r x'_r + b_ir + U_r h'_r + b_hr)
    u_t  = σ(W_z x'_z + b_iz + U_z h'_z + b_hz)           (``nn.GRU``'s z_t)
    n_t  = tanh(W_n x'_n + b_in + r_t ∘ (U_n h'_n + b_hn))  (h_{t-1} enters the candidate
                                                            only through U_n h'_n)
    h̃_t = (1 - u_t) ∘ (d_t ∘ n_t) + u_t ∘ h_{t-1}         (Semeniuta: d on the candidate)
    h_t  = m_t ∘ h_{t-1} + (1 - m_t) ∘ h̃_t                 (zoneout on h; no cell to zone)

Without masks this is ``nn.GRU`` exactly (tests/test_gru.py, p = 0 parity on both paths),
and the layer's ``gru`` submodule is an ``nn.GRU``: a checkpoint's layer loads into one.
Moon's mask acts on the LSTM's memory cell and zoneout_cell on c_t, which a GRU does not
have: both are refused in one line. The state is (h, c) as for the LSTM, with c empty,
(1, B, 0), so the model, the trainer and the checkpoints carry it unchanged.

* **fused**: ``nn.GRU`` (cuDNN on a GPU) for the variants without an in-step mask: none,
  zaremba, weight_drop (DropConnect on U, 3H x H) and awd, and Gal's z_h at ``batch``
  granularity (dropped columns of U).
* **generic**: the loop above, differentiated by autograd and compiled in blocks
  (:class:`~rnnreg.model.generic.GenericRecurrence`), for gal, semeniuta and zoneout and
  for a plug-in rule whose ``cells`` include ``gru``. There is no hand-written backward:
  ``model.lstm_impl=loop`` runs this path too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from rnnreg.config.dropout import InStepDropout, LSTMPath
from rnnreg.model.generic import GenericRecurrence
from rnnreg.model.layer import LayerState, PathError, RecurrentLayer
from rnnreg.model.recurrence import MemoryForm, _at
from rnnreg.model.rule import BuiltinRule, GRUGates, Rule


def hidden_products(
    h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(U_r h_r + b_hr, U_z h_z + b_hz, U_n h_n + b_hn), each (B, H); per gate k when
    ``h`` is (3, B, H)."""
    if h.dim() == 3:
        hidden = h.size(-1)
        u_gates = weight_hh.view(3, hidden, hidden).transpose(1, 2)
        return torch.baddbmm(bias_hh.view(3, 1, hidden), h, u_gates).unbind(0)
    return torch.addmm(bias_hh, h, weight_hh.t()).chunk(3, dim=1)


def gru_gates(gx_t: torch.Tensor, products: tuple[torch.Tensor, ...]) -> GRUGates:
    """r, u = σ(gx + U h' + b_h), n = tanh(gx_n + r ∘ (U_n h'_n + b_hn)); ``gx_t`` is
    (B, 3H), or gate-major (3, B, H)."""
    a_r, a_u, a_n = gx_t.unbind(0) if gx_t.dim() == 3 else gx_t.chunk(3, dim=1)
    p_r, p_u, p_n = products
    r = torch.sigmoid(a_r + p_r)
    return GRUGates(r, torch.sigmoid(a_u + p_u), torch.tanh(torch.addcmul(a_n, r, p_n)))


def gru_steps(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_hh: torch.Tensor,
    rule: Rule,
    names: tuple[str, ...],
    *masks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GRU's loop over ``gx`` (T, B, 3H), or (T, 3, B, H) gate-major, from h; ``c``
    (empty) is carried through. Returns outputs (T, B, H), h_T, c."""
    outputs = []
    for t in range(gx.size(0)):
        z = {name: _at(mask, t) for name, mask in zip(names, masks, strict=True)}
        products = hidden_products(rule.pre_hidden(h, z), weight_hh, bias_hh)
        h = rule.post_gru(gru_gates(gx[t], products), h, z)
        outputs.append(h)
    return torch.stack(outputs), h, c


class GRURecurrence(GenericRecurrence):
    """:func:`gru_steps` in the generic path's blocks (differentiated by autograd)."""

    def __init__(
        self,
        rule: Rule,
        compile_options: dict[str, Any] | None = None,
        key: Any = None,
        block: int = 35,
    ) -> None:
        super().__init__(rule, compile_options, key=("gru", key), block=block)

    def _function(self, which: Any) -> Any:
        return gru_steps


class GRULayer(RecurrentLayer):
    """A single-layer GRU with the in-step regularizers of :class:`InStepDropout` that have
    a meaning on it."""

    cell: ClassVar[str] = "gru"
    gates: ClassVar[int] = 3
    loop_path: ClassVar[LSTMPath] = LSTMPath.generic  # no hand-written GRU backward

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        dropout: InStepDropout | None = None,
        path: LSTMPath | str = LSTMPath.auto,
        rule: Rule | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, dropout, rule)
        _refuse_memory_masks(self.dropout)
        self.gru = nn.GRU(input_size, hidden_size)
        self.path = self._choose_path(LSTMPath(path), rule)
        self.rule = rule or BuiltinRule(self.dropout, MemoryForm(False, False))
        self._trained = GRURecurrence(self.rule)

    @property
    def rnn(self) -> nn.GRU:
        return self.gru

    def compile_loop(self, block: int = 35, **options: Any) -> None:
        """Compile the generic loop in blocks of ``block``, 5 and 1 (no effect when fused)."""
        key = (self.dropout, self.input_size, self.hidden_size)
        self._trained = GRURecurrence(self.rule, options, key=key, block=block)

    def _fused(
        self, x: torch.Tensor, state: LayerState, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        h0, c0 = state
        if weight_hh is self.gru.weight_hh_l0:
            out, h = self.gru(x, h0)
        else:
            out, h = torch.func.functional_call(self.gru, {"weight_hh_l0": weight_hh}, (x, h0))
        return out, (h, c0)

    def _input_bias(self) -> torch.Tensor:
        return self.gru.bias_ih_l0

    def _cell_inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.gru.bias_hh_l0,)


def _refuse_memory_masks(d: InStepDropout) -> None:
    """Moon's mask and zoneout_cell act on the LSTM's memory c_t: one line each."""
    if d.p_memory > 0:
        raise PathError(
            "variant.p_memory (rnnDrop, Moon) masks the LSTM's memory cell, which a GRU "
            "does not have; use model.cell=lstm, or set variant.p_memory=0"
        )
    if d.zoneout_cell > 0:
        raise PathError(
            f"variant.zoneout_cell={d.zoneout_cell} zones out the LSTM's memory cell, which a "
            "GRU does not have; set variant.zoneout_cell=0 (zoneout on h: "
            "variant.zoneout_hidden)"
        )
