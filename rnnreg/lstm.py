"""The LSTM layer: one set of ``nn.LSTM`` parameters, two ways to run it.

    i_t = σ(W_i x_t + U_i h_{t-1} + b_i)     f_t = σ(W_f x_t + U_f h_{t-1} + b_f)
    g_t = tanh(W_g x_t + U_g h_{t-1} + b_g)  o_t = σ(W_o x_t + U_o h_{t-1} + b_o)
    c_t = f_t ∘ c_{t-1} + i_t ∘ g_t           h_t = o_t ∘ tanh(c_t)

Gate order and bias layout are those of ``torch.nn.LSTM`` (i, f, g, o; ``b_ih + b_hh``):
the parameters live in an ``nn.LSTM`` submodule, so weights move freely between paths.

* **fused**: the library kernel (cuDNN on a GPU) runs the recurrence. Masks on weights
  (weight-drop on ``U``, a ``batch`` mask on ``h_{t-1}`` as dropped columns of ``U``) are
  applied to the weight, which is passed to the kernel with ``torch.func.functional_call``.
* **loop**: a loop over time for masks inside the step (Gal's ``z_h`` per row, Moon,
  Semeniuta, zoneout). The input projection ``W x_t + b`` of all steps is one matrix
  product before the loop; training uses the hand-written backward through time of
  :mod:`rnnreg.recurrence` (the weight gradient is one product over the window).

The in-step regularizers, in SPEC notation (``z`` are masks; zoneout ``z = 1`` keeps):

    gates  = W (x_t ∘ z_x) + U (h_{t-1} ∘ z_h) + b          Gal (per gate when untied)
    ĉ_t    = f_t ∘ c_{t-1} + z_u ∘ i_t ∘ g_t                 Semeniuta
    ĉ_t    = z_m ∘ ĉ_t                                       Moon, ``memory_carried``
    ĥ_t    = o_t ∘ tanh(ĉ_t ∘ z_m)                           Moon (output form)
    c_t    = z^c ∘ c_{t-1} + (1 - z^c) ∘ ĉ_t                 zoneout
    h_t    = z^h ∘ h_{t-1} + (1 - z^h) ∘ ĥ_t                 zoneout

Outside training every mask is replaced by its expectation: 1 for scaled masks, ``1-p``
for unscaled ones, ``p`` for zoneout's keep masks. ``mc_dropout = True`` keeps the
training-time masks on (MC-dropout evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import torch
from torch import nn

from rnnreg.recurrence import InStepMasks, Recurrence, recurrence
from rnnreg.regularizers.masks import (
    Granularity,
    HeldMasks,
    draw_activation_mask,
    draw_mask,
    held_or_drawn,
)
from rnnreg.regularizers.weights import drop_weight

LayerState = tuple[torch.Tensor, torch.Tensor]


class LSTMPath(str, Enum):
    auto = "auto"
    fused = "fused"
    loop = "loop"


@dataclass(frozen=True)
class InStepDropout:
    """What one LSTM layer drops itself (the rest is outside the layer)."""

    #: Per-gate input masks z_x (Gal, untied); tied input masks are applied outside.
    p_input: float = 0.0
    input_granularity: Granularity = Granularity.sequence
    #: Gal's z_h on h_{t-1}.
    p_hidden: float = 0.0
    hidden_granularity: Granularity = Granularity.sequence
    #: One mask per gate (4 for x, 4 for h) instead of one shared by the gates.
    untied: bool = False
    #: Moon's memory mask; ``memory_carried`` also masks the carried c_t.
    p_memory: float = 0.0
    memory_granularity: Granularity = Granularity.sequence
    memory_carried: bool = False
    #: Semeniuta's mask on the update i_t ∘ g_t.
    p_update: float = 0.0
    update_granularity: Granularity = Granularity.step
    update_scale: bool = True
    #: Zoneout: probabilities of keeping the previous c or h (no rescaling).
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    zoneout_granularity: Granularity = Granularity.step
    #: Weight-drop (DropConnect) on U, one mask per forward pass.
    p_weight: float = 0.0
    #: Inverted scaling of the Gal and Moon masks.
    scale: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                (f.name.startswith("p_") or f.name.startswith("zoneout_"))
                and isinstance(value, float)
                and not 0.0 <= value < 1.0
            ):
                raise ValueError(f"{f.name}={value} is not in [0, 1)")

    @property
    def hidden_on_weight(self) -> bool:
        """A ``batch`` z_h is shared by every row and step: it is a column mask on U."""
        return self.p_hidden > 0 and self.hidden_granularity is Granularity.batch

    @property
    def needs_loop(self) -> bool:
        """Whether a mask acts inside the step in a way the fused kernel cannot express."""
        return (
            (self.p_input > 0 and self.untied)
            or (self.p_hidden > 0 and not self.hidden_on_weight)
            or self.p_memory > 0
            or self.p_update > 0
            or self.zoneout_cell > 0
            or self.zoneout_hidden > 0
        )


@dataclass
class StepMasks:
    """Masks for one forward pass, time-major and broadcastable.

    Shapes are (T|1, B|1, H) — or (T|1, 4, B|1, H) for untied gate masks — except
    ``weight_hh`` (4H, H). In tests, give them explicitly to :meth:`LSTMLayer.forward`.
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


class LSTMLayer(nn.Module):
    """A single-layer LSTM with the in-step regularizers of :class:`InStepDropout`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        dropout: InStepDropout | None = None,
        path: LSTMPath | str = LSTMPath.auto,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.dropout = dropout or InStepDropout()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.mc_dropout = False
        #: Independent copies in the batch (MC dropout): ``batch`` masks per copy.
        self.replicas = 1
        #: Time-constant masks kept across forward passes (MC dropout, one draw per pass).
        self.held: HeldMasks | None = None
        requested = LSTMPath(path)
        if requested is LSTMPath.fused and self.dropout.needs_loop:
            raise ValueError(
                "this variant masks inside the recurrence and needs the loop path; "
                "use model.lstm_impl=auto or loop"
            )
        if requested is LSTMPath.auto:
            requested = LSTMPath.loop if self.dropout.needs_loop else LSTMPath.fused
        self.path = requested
        #: Training runs the recurrence with its hand-written backward (eager until
        #: :meth:`compile_loop`); evaluation runs :func:`recurrence` without a graph.
        self._trained = Recurrence()

    def compile_loop(self, **options: Any) -> None:
        """Train the loop's recurrence under ``torch.compile`` (no effect on the fused path).

        Only passes that build a graph use it: evaluation (no grad) runs eagerly, so its
        other batch sizes and window lengths cause no recompilation.
        """
        if self.path is LSTMPath.loop:
            key = (self.dropout, self.input_size, self.hidden_size)
            self._trained = Recurrence(options, key=key)

    @property
    def loop_mode(self) -> str | None:
        """How the loop path trains: ``compiled`` or ``eager``; None on the fused path."""
        return self._trained.mode if self.path is LSTMPath.loop else None

    @property
    def stochastic(self) -> bool:
        return self.training or self.mc_dropout

    # --- masks ---------------------------------------------------------------------------

    @property
    def weight_masked(self) -> bool:
        """Whether a mask acts on U (weight-drop, or a ``batch`` z_h as dropped columns)."""
        return self.dropout.p_weight > 0 or self.dropout.hidden_on_weight

    def draw_masks(
        self, steps: int, batch: int, device: torch.device, dtype: torch.dtype
    ) -> StepMasks:
        """Fresh masks for one forward pass over (steps, batch), or their expectations."""
        d = self.dropout
        stochastic = self.stochastic

        def inverted(
            name: str,
            p: float,
            granularity: Granularity,
            scale: bool,
            units: int,
            untied: bool = False,
        ) -> torch.Tensor | None:
            if p == 0.0:
                return None
            if not stochastic:  # E[z] = 1 when scaled, 1 - p when not
                if scale:
                    return None
                return torch.full((1, 1, units), 1.0 - p, device=device, dtype=dtype)
            return held_or_drawn(
                self.held,
                name,
                granularity,
                lambda: draw_activation_mask(
                    (steps, batch, units),
                    p,
                    granularity,
                    gates=4 if untied else None,
                    replicas=self.replicas,
                    scale=scale,
                    device=device,
                    dtype=dtype,
                ),
            )

        def keep(name: str, p: float) -> torch.Tensor | None:
            if p == 0.0:
                return None
            if not stochastic:  # E[z] = p
                return torch.full((1, 1, self.hidden_size), p, device=device, dtype=dtype)
            # z = 1 (keep the old value) with probability p: "dropped" with probability 1 - p
            return held_or_drawn(
                self.held,
                name,
                d.zoneout_granularity,
                lambda: draw_activation_mask(
                    (steps, batch, self.hidden_size),
                    1.0 - p,
                    d.zoneout_granularity,
                    replicas=self.replicas,
                    scale=False,
                    device=device,
                    dtype=dtype,
                ),
            )

        h_size = self.hidden_size
        masks = StepMasks(
            input=inverted("input", d.p_input, d.input_granularity, d.scale, self.input_size, True)
            if d.untied
            else None,
            hidden=None
            if d.hidden_on_weight
            else inverted("hidden", d.p_hidden, d.hidden_granularity, d.scale, h_size, d.untied),
            update=inverted("update", d.p_update, d.update_granularity, d.update_scale, h_size),
            memory=inverted("memory", d.p_memory, d.memory_granularity, d.scale, h_size),
            zoneout_cell=keep("zoneout_cell", d.zoneout_cell),
            zoneout_hidden=keep("zoneout_hidden", d.zoneout_hidden),
        )
        if stochastic:
            masks.weight_hh = held_or_drawn(
                self.held, "weight_hh", None, lambda: self._draw_weight_mask(device, dtype)
            )
        elif d.hidden_on_weight and not d.scale:  # E[U ∘ M] = (1 - p) U for unscaled columns
            masks.weight_hh = torch.full((1, 1), 1.0 - d.p_hidden, device=device, dtype=dtype)
        return masks

    def _draw_weight_mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """M for U ∘ M: the weight-drop mask times the column mask of a ``batch`` z_h.

        ``(h ∘ z) U_kᵀ = h (U_k diag(z))ᵀ``: a z_h shared by every row and step of the
        batch is the same as dropping columns of U (per gate block U_k when untied).
        """
        d = self.dropout
        weight = self.lstm.weight_hh_l0
        mask = None
        if d.p_weight > 0:
            mask = draw_mask(weight.shape, d.p_weight, device=device, dtype=dtype)
        if d.hidden_on_weight:
            gates, size = (4 if d.untied else 1), self.hidden_size
            z_h = draw_mask((gates, 1, size), d.p_hidden, scale=d.scale, device=device, dtype=dtype)
            columns = z_h.expand(4, size, size).reshape(4 * size, size)
            mask = columns if mask is None else mask * columns
        return mask

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
    ) -> tuple[torch.Tensor, LayerState]:
        """Outputs (T, B, H) for inputs (T, B, n) from ``state`` = (h, c), each (1, B, H)."""
        if masks is None and self.replicas > 1 and self.stochastic and self.weight_masked:
            return self._forward_per_replica(x, state)
        if masks is None:
            masks = self.draw_masks(x.size(0), x.size(1), x.device, x.dtype)
        weight_hh = self.effective_weight_hh(masks)
        if self.path is LSTMPath.fused:
            if weight_hh is self.lstm.weight_hh_l0:
                return self.lstm(x, state)
            return torch.func.functional_call(self.lstm, {"weight_hh_l0": weight_hh}, (x, state))
        return self._loop(x, state, masks, weight_hh)

    def _forward_per_replica(
        self, x: torch.Tensor, state: LayerState
    ) -> tuple[torch.Tensor, LayerState]:
        """One weight mask per replica: run each replica's rows with its own U ∘ M."""
        replicas, held = self.replicas, self.held
        outputs, hs, cs = [], [], []
        self.replicas = 1
        try:
            for index, (xs, h, c) in enumerate(
                zip(
                    x.chunk(replicas, 1),
                    state[0].chunk(replicas, 1),
                    state[1].chunk(replicas, 1),
                    strict=True,
                )
            ):
                self.held = None if held is None else held.child(index)
                out, (h, c) = self.forward(xs, (h, c))
                outputs.append(out)
                hs.append(h)
                cs.append(c)
        finally:
            self.replicas, self.held = replicas, held
        return torch.cat(outputs, 1), (torch.cat(hs, 1), torch.cat(cs, 1))

    def _loop(
        self, x: torch.Tensor, state: LayerState, masks: StepMasks, weight_hh: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        steps, batch, _ = x.shape
        lstm = self.lstm
        bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
        size = self.hidden_size
        # an untied z_h runs the step gate-major, (T, 4, B, H); else (T, B, 4H)
        gate_major = masks.hidden is not None and masks.hidden.dim() == 4
        if masks.input is None:  # W x_t + b for all steps in one product
            gx = torch.addmm(bias, x.reshape(steps * batch, -1), lstm.weight_ih_l0.t())
            gx = gx.view(steps, batch, 4 * size)
            if gate_major:
                gx = gx.view(steps, batch, 4, size).transpose(1, 2).contiguous()
        else:  # untied: W_k (x_t ∘ z_k) + b_k for every gate k, still one batched product
            masked = x.unsqueeze(1) * masks.input  # (T, 4, B, n)
            masked = masked.expand(steps, 4, batch, self.input_size).transpose(0, 1)
            w_gates = lstm.weight_ih_l0.view(4, size, self.input_size).transpose(1, 2)
            per_gate = torch.bmm(masked.reshape(4, steps * batch, self.input_size), w_gates)
            per_gate = per_gate.view(4, steps, batch, size) + bias.view(4, 1, 1, size)
            if gate_major:
                gx = per_gate.transpose(0, 1).contiguous()
            else:
                gx = per_gate.permute(1, 2, 0, 3).reshape(steps, batch, 4 * size)
        h0, c0 = state
        run = self._trained if torch.is_grad_enabled() else recurrence
        outputs, h, c = run(
            gx,
            h0[0],
            c0[0],
            weight_hh,
            masks.in_step(),
            self.dropout.memory_carried,
        )
        return outputs, (h.unsqueeze(0), c.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, path={self.path.value}"
