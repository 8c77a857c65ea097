"""The LSTM layer: one set of ``nn.LSTM`` parameters, two ways to run it.

The step, with every in-step mask, is written once, in :mod:`rnnreg.model.recurrence`. Gate
order and bias layout are those of ``torch.nn.LSTM`` (i, f, g, o; ``b_ih + b_hh``): the
parameters live in an ``nn.LSTM`` submodule, so weights move freely between paths.

* **fused**: the library kernel (cuDNN on a GPU) runs the recurrence. Masks on weights
  (weight-drop on ``U``, a ``batch`` mask on ``h_{t-1}`` as dropped columns of ``U``) are
  applied to the weight, which is passed to the kernel with ``torch.func.functional_call``.
* **loop**: a loop over time for masks inside the step (Gal's ``z_h`` per row, Moon,
  Semeniuta, zoneout). The input projection ``W x_t + b`` of all steps is one matrix
  product before the loop; training uses the hand-written backward through time of
  :mod:`rnnreg.model.recurrence` (the weight gradient is one product over the window).
* **generic**: the same loop over a rule's hooks (:mod:`rnnreg.model.rule`), differentiated
  by autograd (:mod:`rnnreg.model.generic`): the only path of a plug-in rule, and a
  second path for the built-in rules (:class:`~rnnreg.model.rule.BuiltinRule`).

The layer's masks are drawn by :mod:`rnnreg.model.regularizers.layer_masks`. Outside training
every mask is replaced by its expectation; a forward pass given ``mc`` (an
``MCDropout``) keeps the training-time masks on (MC-dropout evaluation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rnnreg import RnnregError
from rnnreg.config.dropout import InStepDropout, LSTMPath, MemoryScale
from rnnreg.model.generic import GenericRecurrence
from rnnreg.model.recurrence import MemoryForm, Recurrence
from rnnreg.model.regularizers.layer_masks import StepMasks, draw_layer_masks
from rnnreg.model.regularizers.masks import MCDropout
from rnnreg.model.regularizers.weights import drop_weight
from rnnreg.model.rule import BuiltinRule, Rule, Units, draw_declared

__all__ = ["InStepDropout", "LSTMLayer", "LSTMPath", "LayerState", "StepMasks"]


LayerState = tuple[torch.Tensor, torch.Tensor]


class PathError(RnnregError, ValueError):
    """A path (``model.lstm_impl``) that cannot run the layer's rule."""


class LSTMLayer(nn.Module):
    """A single-layer LSTM with the in-step regularizers of :class:`InStepDropout`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        dropout: InStepDropout | None = None,
        path: LSTMPath | str = LSTMPath.auto,
        rule: Rule | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dropout = dropout or InStepDropout()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.path = self._choose_path(LSTMPath(path), rule)
        self.memory = MemoryForm(
            carried=self.dropout.memory_carried,
            scale_on_output=self.dropout.memory_scale is MemoryScale.on_output,
        )
        #: The in-step rule the generic path runs: a plug-in's, or the built-in masks.
        self.rule = rule or BuiltinRule(self.dropout, self.memory)
        self.plugin = rule is not None
        #: Training runs the recurrence with its hand-written backward (generic: autograd),
        #: evaluation without a graph; both eager until :meth:`compile_loop`.
        self._trained: Recurrence | GenericRecurrence = (
            GenericRecurrence(self.rule) if self.path is LSTMPath.generic else Recurrence()
        )

    def _choose_path(self, requested: LSTMPath, rule: Rule | None) -> LSTMPath:
        """The path ``requested`` resolves to, or one line saying why it cannot run."""
        if rule is not None:
            if "lstm" not in rule.cells:
                raise PathError(
                    f"variant {rule.name!r} acts on the cells {list(rule.cells)}, not on the "
                    "LSTM; choose a variant that supports it"
                )
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
        if requested is LSTMPath.fused and self.dropout.needs_loop:
            raise PathError(
                "this variant masks inside the recurrence and needs the loop path; "
                "use model.lstm_impl=auto, loop or generic"
            )
        if requested is LSTMPath.auto:
            return LSTMPath.loop if self.dropout.needs_loop else LSTMPath.fused
        return requested

    def compile_loop(self, block: int = 35, **options: Any) -> None:
        """Run the loop's recurrence under ``torch.compile`` (no effect on the fused path),
        in blocks of ``block`` steps, then 5, then 1 (:class:`~rnnreg.model.recurrence.Recurrence`):
        training, evaluation and every window length share the same compiled code."""
        key = (self.dropout, self.input_size, self.hidden_size)
        if self.path is LSTMPath.loop:
            self._trained = Recurrence(options, key=key, block=block)
        elif self.path is LSTMPath.generic:
            self._trained = GenericRecurrence(self.rule, options, key=key, block=block)

    @property
    def compilations(self) -> int:
        """Graphs compiled for this layer's configuration (0 on the fused path or eager)."""
        return 0 if self.path is LSTMPath.fused else self._trained.compilations

    @property
    def loop_mode(self) -> str | None:
        """How the loop path trains: ``compiled`` or ``eager``; None on the fused path."""
        return None if self.path is LSTMPath.fused else self._trained.mode

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
        )

    # --- forward -------------------------------------------------------------------------

    def effective_weight_hh(self, masks: StepMasks) -> torch.Tensor:
        """``U ∘ M`` when a mask acts on the weight (weight-drop, batch z_h), else ``U``."""
        weight = self.lstm.weight_hh_l0
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
        """Outputs (T, B, H) for inputs (T, B, n) from ``state`` = (h, c), each (1, B, H).

        ``masks`` replaces the draw (tests); ``mc`` keeps the masks on outside training.
        """
        if masks is None and mc is not None and mc.replicas > 1 and self.dropout.weight_masked:
            return self._forward_per_replica(x, state, mc)
        if masks is None:
            masks = self.draw_masks(x.size(0), x.size(1), x.device, x.dtype, mc)
        weight_hh = self.effective_weight_hh(masks)
        if self.path is LSTMPath.generic:
            return self._generic(x, state, masks, weight_hh, mc)
        if self.path is LSTMPath.fused:
            if weight_hh is self.lstm.weight_hh_l0:
                return self.lstm(x, state)
            return torch.func.functional_call(self.lstm, {"weight_hh_l0": weight_hh}, (x, state))
        return self._loop(x, state, masks, weight_hh)

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

    def _input_products(self, x: torch.Tensor, gate_major: bool) -> torch.Tensor:
        """gx = W x + b for every step in one product: (T, B, 4H), or (T, 4, B, H) when
        ``gate_major``. ``x`` is (T, B, n), or (T, 4, B, n) with one input per gate
        (W_k (x_t ∘ z_k) + b_k for gate k, still one batched product)."""
        lstm, size = self.lstm, self.hidden_size
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        if x.dim() == 3:
            steps, batch, _ = x.shape
            gx = torch.addmm(bias, x.reshape(steps * batch, -1), lstm.weight_ih_l0.t())
            gx = gx.view(steps, batch, 4 * size)
            if gate_major:
                gx = gx.view(steps, batch, 4, size).transpose(1, 2).contiguous()
            return gx
        steps, _, batch, _ = x.shape
        masked = x.expand(steps, 4, batch, self.input_size).transpose(0, 1)
        w_gates = lstm.weight_ih_l0.view(4, size, self.input_size).transpose(1, 2)
        per_gate = torch.bmm(masked.reshape(4, steps * batch, self.input_size), w_gates)
        per_gate = per_gate.view(4, steps, batch, size) + bias.view(4, 1, 1, size)
        if gate_major:
            return per_gate.transpose(0, 1).contiguous()
        return per_gate.permute(1, 2, 0, 3).reshape(steps, batch, 4 * size)

    def _loop(
        self, x: torch.Tensor, state: LayerState, masks: StepMasks, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        # an untied z_h runs the step gate-major, (T, 4, B, H); else (T, B, 4H)
        gate_major = masks.hidden is not None and masks.hidden.dim() == 4
        x_in = x if masks.input is None else x.unsqueeze(1) * masks.input  # (T, 4, B, n)
        gx = self._input_products(x_in, gate_major)
        h0, c0 = state
        assert isinstance(self._trained, Recurrence)
        run = self._trained if torch.is_grad_enabled() else self._trained.infer
        outputs, h, c = run(gx, h0[0], c0[0], weight_hh, masks.in_step(), self.memory)
        return outputs, (h.unsqueeze(0), c.unsqueeze(0))

    def _generic(
        self,
        x: torch.Tensor,
        state: LayerState,
        masks: StepMasks,
        weight_hh: torch.Tensor,
        mc: MCDropout | None,
    ) -> tuple[torch.Tensor, LayerState]:
        """The generic path: the rule's hooks around the plain LSTM step (autograd)."""
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
        outputs, h, c = self._trained(gx, h0[0], c0[0], weight_hh, in_loop)
        return outputs, (h.unsqueeze(0), c.unsqueeze(0))

    def rule_masks(
        self, x: torch.Tensor, masks: StepMasks, mc: MCDropout | None = None
    ) -> dict[str, torch.Tensor | None]:
        """The masks the generic path gives the rule's hooks: the built-in masks already
        drawn (:class:`BuiltinRule`), or a plug-in's declared masks, drawn now."""
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
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, path={self.path.value}"
