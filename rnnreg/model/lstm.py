"""The LSTM layer: one set of ``nn.LSTM`` parameters, three ways to run it
(rnnreg/model/layer.py holds what it shares with the GRU).

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

from typing import Any, ClassVar

import torch
from torch import nn

from rnnreg.config.dropout import InStepDropout, LSTMPath, MemoryScale
from rnnreg.model.generic import GenericRecurrence
from rnnreg.model.layer import LayerState, PathError, RecurrentLayer
from rnnreg.model.recurrence import MemoryForm, Recurrence
from rnnreg.model.regularizers.layer_masks import StepMasks
from rnnreg.model.rule import BuiltinRule, Rule

__all__ = ["InStepDropout", "LSTMLayer", "LSTMPath", "LayerState", "PathError", "StepMasks"]


class LSTMLayer(RecurrentLayer):
    """A single-layer LSTM with the in-step regularizers of :class:`InStepDropout`."""

    cell: ClassVar[str] = "lstm"
    gates: ClassVar[int] = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        dropout: InStepDropout | None = None,
        path: LSTMPath | str = LSTMPath.auto,
        rule: Rule | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, dropout, rule)
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.path = self._choose_path(LSTMPath(path), rule)
        self.memory = MemoryForm(
            carried=self.dropout.memory_carried,
            scale_on_output=self.dropout.memory_scale is MemoryScale.on_output,
        )
        #: The in-step rule the generic path runs: a plug-in's, or the built-in masks.
        self.rule = rule or BuiltinRule(self.dropout, self.memory)
        #: Training runs the recurrence with its hand-written backward (generic: autograd),
        #: evaluation without a graph; both eager until :meth:`compile_loop`.
        self._trained = (
            GenericRecurrence(self.rule) if self.path is LSTMPath.generic else Recurrence()
        )

    @property
    def rnn(self) -> nn.LSTM:
        return self.lstm

    def compile_loop(self, block: int = 35, **options: Any) -> None:
        """Run the loop's recurrence under ``torch.compile`` (no effect on the fused path),
        in blocks of ``block`` steps, then 5, then 1 (:class:`~rnnreg.model.recurrence.Recurrence`):
        training, evaluation and every window length share the same compiled code."""
        key = (self.dropout, self.input_size, self.hidden_size)
        if self.path is LSTMPath.loop:
            self._trained = Recurrence(options, key=key, block=block)
        elif self.path is LSTMPath.generic:
            self._trained = GenericRecurrence(self.rule, options, key=key, block=block)

    def _fused(
        self, x: torch.Tensor, state: LayerState, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        if weight_hh is self.lstm.weight_hh_l0:
            return self.lstm(x, state)
        return torch.func.functional_call(self.lstm, {"weight_hh_l0": weight_hh}, (x, state))

    def _input_bias(self) -> torch.Tensor:
        return self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0

    @staticmethod
    def _gated_inputs(x: torch.Tensor, z_x: torch.Tensor) -> torch.Tensor:
        """x_t ∘ z_k for every gate k: (T, 4, B, n), a view of a gate-first product. With a
        per-sequence z_x (1, 4, B, n) the product is laid out (4, T, B, n), the layout of
        the batched product over gates (RecurrentLayer._input_products), so neither the
        product nor its backward copies the inputs once more."""
        return (x.unsqueeze(0) * z_x.transpose(0, 1)).transpose(0, 1)

    def _loop(
        self, x: torch.Tensor, state: LayerState, masks: StepMasks, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        # an untied z_h runs the step gate-major, (T, 4, B, H); else (T, B, 4H)
        gate_major = masks.hidden is not None and masks.hidden.dim() == 4
        x_in = x if masks.input is None else self._gated_inputs(x, masks.input)
        gx = self._input_products(x_in, gate_major, with_bias=False)  # W x; b at each step
        h0, c0 = state
        assert isinstance(self._trained, Recurrence)
        run = self._trained if torch.is_grad_enabled() else self._trained.infer
        biases = (self.lstm.bias_ih_l0, self.lstm.bias_hh_l0)
        outputs, h, c = run(gx, h0, c0, weight_hh, masks.in_step(), self.memory, *biases)
        return outputs, (h, c)
