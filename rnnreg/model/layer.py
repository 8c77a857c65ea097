"""What an LSTM layer and a GRU layer share: one set of the library module's parameters,
the masks drawn for a forward pass, and the ways to run it.

A layer of ``gates`` gates (4: LSTM i, f, g, o; 3: GRU r, z, n) keeps its parameters in a
``torch.nn.LSTM`` or ``torch.nn.GRU`` submodule (:attr:`RecurrentLayer.rnn`), so a
checkpoint's layer loads into the library module and weights move freely between paths:

* **fused**: the library kernel (cuDNN on a GPU). Masks on weights (weight-drop on U, a
  ``batch`` z_h as dropped columns of U) are applied to the weight, which is passed to
  the kernel with ``torch.func.functional_call``;
* **loop**: a loop over time with the in-step masks (rnnreg/model/lstm.py: the LSTM's
  hand-written backward);
* **generic**: the same loop over a rule's hooks (:mod:`rnnreg.model.rule`),
  differentiated by autograd (:mod:`rnnreg.model.generic`).

The input projection W x'_t + b of all steps is one matrix product before any loop
(:meth:`RecurrentLayer._input_products`). Outside training every mask is its expectation;
a forward pass given ``mc`` (an ``MCDropout``) keeps the training-time masks on.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rnnreg import RnnregError
from rnnreg.config.dropout import InStepDropout, LSTMPath
from rnnreg.model.generic import GenericRecurrence
from rnnreg.model.recurrence import Recurrence
from rnnreg.model.regularizers.layer_masks import StepMasks, draw_layer_masks
from rnnreg.model.regularizers.masks import MCDropout
from rnnreg.model.regularizers.weights import drop_weight
from rnnreg.model.rule import Rule, Units, draw_declared

LayerState = tuple[torch.Tensor, torch.Tensor]


class PathError(RnnregError, ValueError):
    """A path (``model.lstm_impl``) or cell (``model.cell``) that cannot run the rule."""


class RecurrentLayer(nn.Module):
    """The shared part of :class:`~rnnreg.model.lstm.LSTMLayer` and
    :class:`~rnnreg.model.gru.GRULayer`. A subclass sets :attr:`cell` and :attr:`gates`,
    builds its library module and its recurrences, and runs the step."""

    cell: ClassVar[str] = ""
    gates: ClassVar[int] = 4
    #: The path of a variant with in-step masks (``model.lstm_impl=auto`` or ``loop``).
    loop_path: ClassVar[LSTMPath] = LSTMPath.loop

    def __init__(
        self, input_size: int, hidden_size: int, dropout: InStepDropout | None, rule: Rule | None
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dropout = dropout or InStepDropout()
        self.plugin = rule is not None
        self._trained: Recurrence | GenericRecurrence = Recurrence()

    @property
    def rnn(self) -> nn.LSTM | nn.GRU:
        """The library module that holds the parameters."""
        raise NotImplementedError

    @property
    def compilations(self) -> int:
        """Graphs compiled for this layer's configuration (0 on the fused path or eager)."""
        return 0 if self.path is LSTMPath.fused else self._trained.compilations

    @property
    def loop_mode(self) -> str | None:
        """How the loop path trains: ``compiled`` or ``eager``; None on the fused path."""
        return None if self.path is LSTMPath.fused else self._trained.mode

    def _choose_path(self, requested: LSTMPath, rule: Rule | None) -> LSTMPath:
        """The path ``requested`` resolves to, or one line saying why it cannot run."""
        if rule is not None:
            return self._check_plugin(rule, requested)
        if requested is LSTMPath.fused and self.dropout.needs_loop:
            raise PathError(
                "this variant masks inside the recurrence and needs the loop path; "
                "use model.lstm_impl=auto, loop or generic"
            )
        if requested is LSTMPath.auto:
            return self.loop_path if self.dropout.needs_loop else LSTMPath.fused
        return self.loop_path if requested is LSTMPath.loop else requested

    def _check_plugin(self, rule: Rule, requested: LSTMPath) -> LSTMPath:
        """A plug-in rule runs on the generic path, on the cells it names, alone."""
        if self.cell not in rule.cells:
            raise PathError(
                f"variant {rule.name!r} acts on the cells {list(rule.cells)}, not on the "
                f"{self.cell.upper()}; choose a variant that supports it, or model.cell="
                f"{rule.cells[0]}"
            )
        try:
            rule.check_cell(self.cell)
        except ValueError as exc:
            raise PathError(f"variant {rule.name!r} on the {self.cell.upper()}: {exc}") from exc
        if self.dropout.needs_loop:
            raise PathError(
                f"variant {rule.name!r} is a plug-in rule: it composes with the masks "
                "outside the layers and with weight-drop (p_weight), not with another "
                "in-step rule; set the built-in in-step rates (p_hidden, p_update, "
                "p_memory, zoneout_*) to 0"
            )
        if requested in (LSTMPath.fused, LSTMPath.loop):
            raise PathError(
                f"variant {rule.name!r} is a plug-in rule, which only the generic path "
                "runs; use model.lstm_impl=auto or generic"
            )
        return LSTMPath.generic

    def draw_masks(
        self,
        steps: int,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        mc: MCDropout | None = None,
    ) -> StepMasks:
        """Fresh masks for one forward pass over (steps, batch), or their expectations."""
        return draw_layer_masks(
            self.dropout,
            self.input_size,
            self.hidden_size,
            steps,
            batch,
            training=self.training,
            mc=mc,
            device=device,
            dtype=dtype,
            gates=self.gates,
        )

    def effective_weight_hh(self, masks: StepMasks) -> torch.Tensor:
        """``U ∘ M`` when a mask acts on the weight (weight-drop, batch z_h), else ``U``."""
        weight = self.rnn.weight_hh_l0
        if masks.weight_hh is None:
            return weight
        return drop_weight(weight, self.dropout.p_weight, mask=masks.weight_hh)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState,
        masks: StepMasks | None = None,
        mc: MCDropout | None = None,
    ) -> tuple[torch.Tensor, LayerState]:
        """Outputs (T, B, H) for inputs (T, B, n) from ``state`` = (h, c), each (1, B, H)
        (a GRU's c is empty, (1, B, 0)). ``masks`` replaces the draw (tests); ``mc`` keeps
        the masks on outside training."""
        if masks is None and mc is not None and mc.replicas > 1 and self.dropout.weight_masked:
            return self._forward_per_replica(x, state, mc)
        if masks is None:
            masks = self.draw_masks(x.size(0), x.size(1), x.device, x.dtype, mc)
        weight_hh = self.effective_weight_hh(masks)
        if self.path is LSTMPath.generic:
            return self._generic(x, state, masks, weight_hh, mc)
        if self.path is LSTMPath.fused:
            return self._fused(x, state, weight_hh)
        return self._loop(x, state, masks, weight_hh)

    def _fused(
        self, x: torch.Tensor, state: LayerState, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        """The library kernel, with ``weight_hh`` in place of U when it is masked."""
        raise NotImplementedError

    def _loop(
        self, x: torch.Tensor, state: LayerState, masks: StepMasks, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        """The loop with a hand-written backward (the LSTM's)."""
        raise NotImplementedError

    def _forward_per_replica(
        self, x: torch.Tensor, state: LayerState, mc: MCDropout
    ) -> tuple[torch.Tensor, LayerState]:
        """One weight mask per replica: run each replica's rows with its own U ∘ M."""
        outputs, hs, cs = [], [], []
        chunks = (x.chunk(mc.replicas, 1), *(part.chunk(mc.replicas, 1) for part in state))
        for index, (xs, h, c) in enumerate(zip(*chunks, strict=True)):
            out, (h, c) = self.forward(xs, (h, c), mc=mc.replica(index))
            outputs.append(out)
            hs.append(h)
            cs.append(c)
        return torch.cat(outputs, 1), (torch.cat(hs, 1), torch.cat(cs, 1))

    def _input_bias(self) -> torch.Tensor:
        """The bias added to W x: b_ih + b_hh (LSTM), b_ih (GRU: b_hn stays inside r ∘ ·)."""
        raise NotImplementedError

    def _input_products(
        self, x: torch.Tensor, gate_major: bool, with_bias: bool = True
    ) -> torch.Tensor:
        """gx = W x + b for every step in one product: (T, B, G·H), or (T, G, B, H) when
        ``gate_major``, for G gates; W x alone without ``with_bias`` (the LSTM's loop adds
        b at each step). ``x`` is (T, B, n), or (T, G, B, n) with one input per gate
        (W_k (x_t ∘ z_k) + b_k for gate k, still one batched product)."""
        weight = self.rnn.weight_ih_l0
        bias = self._input_bias() if with_bias else None
        size, gates = self.hidden_size, self.gates
        if x.dim() == 3:
            gx = F.linear(x, weight, bias)
            if gate_major:
                steps, batch, _ = x.shape
                gx = gx.view(steps, batch, gates, size).transpose(1, 2).contiguous()
            return gx
        steps, _, batch, _ = x.shape
        if x.size(1) != gates:  # one input for every gate
            x = x.expand(steps, gates, batch, self.input_size)
        masked = x.transpose(0, 1)
        w_gates = weight.view(gates, size, self.input_size).transpose(1, 2)
        per_gate = torch.bmm(masked.reshape(gates, steps * batch, self.input_size), w_gates)
        per_gate = per_gate.view(gates, steps, batch, size)
        if bias is not None:
            per_gate = per_gate + bias.view(gates, 1, 1, size)
        if gate_major:
            return per_gate.transpose(0, 1).contiguous()
        return per_gate.permute(1, 2, 0, 3).reshape(steps, batch, gates * size)

    def _cell_inputs(self) -> tuple[torch.Tensor, ...]:
        """Parameters the generic step takes after U (the GRU's b_hh); none for the LSTM."""
        return ()

    def _generic(
        self,
        x: torch.Tensor,
        state: LayerState,
        masks: StepMasks,
        weight_hh: torch.Tensor,
        mc: MCDropout | None,
    ) -> tuple[torch.Tensor, LayerState]:
        """The generic path: the rule's hooks around the cell's plain step (autograd)."""
        z = self.rule_masks(x, masks, mc)
        rule = self.rule
        weight_hh = rule.pre_weights(weight_hh, z)
        x_in = rule.pre_input(x, z)
        declared = {mask.name: mask for mask in rule.declared()}
        gate_major = any(
            m.per_gate and m.units is Units.hidden and z.get(m.name) is not None
            for m in declared.values()
        )
        gx = self._input_products(x_in, gate_major)
        once = {n for n, m in declared.items() if m.units is not Units.hidden}
        h0, c0 = state
        assert isinstance(self._trained, GenericRecurrence)
        in_loop = {name: mask for name, mask in z.items() if name not in once}
        outputs, h, c = self._trained(gx, h0[0], c0[0], weight_hh, in_loop, *self._cell_inputs())
        return outputs, (h.unsqueeze(0), c.unsqueeze(0))

    def rule_masks(
        self, x: torch.Tensor, masks: StepMasks, mc: MCDropout | None = None
    ) -> dict[str, torch.Tensor | None]:
        """The masks the generic path gives the rule's hooks: the built-in masks already
        drawn (:class:`~rnnreg.model.rule.BuiltinRule`), or a plug-in's declared masks,
        drawn now."""
        if not self.plugin:
            return {
                "input": masks.input,
                "hidden": masks.hidden,
                "update": masks.update,
                "memory": masks.memory,
                "zoneout_cell": masks.zoneout_cell,
                "zoneout_hidden": masks.zoneout_hidden,
            }
        sizes = {Units.input: self.input_size, Units.hidden: self.hidden_size}
        return draw_declared(
            self.rule.declared(),
            sizes,
            x.size(0),
            x.size(1),
            training=self.training,
            mc=mc,
            device=x.device,
            dtype=x.dtype,
            gates=self.gates,
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, path={self.path.value}"
