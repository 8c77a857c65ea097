"""The LSTM step equations over a window, with every in-step mask (docs/variants.md).

Forward, for t = 1..T, from gx_t = W (x_t ∘ z_x) + b (precomputed for all steps):

    a_t    = gx_t + U (h_{t-1} ∘ z_h)                       (per gate k when untied)
    i, f, o = σ(a_i), σ(a_f), σ(a_o)        g = tanh(a_g)
    ĉ_t    = f ∘ c_{t-1} + z_u ∘ i ∘ g                       Semeniuta
    ĉ_t    = z_m ∘ ĉ_t                                       Moon, ``carried``
    ĥ_t    = o ∘ tanh(ĉ_t ∘ z_m)                             Moon (output form)
    ĉ_t    = b_m ∘ ĉ_t,  ĥ_t = o ∘ tanh(ĉ_t) ∘ z_m          Moon, ``scale_on_output``
                              (b_m = [z_m ≠ 0]; ĉ_t masked only when ``carried``)
    c_t    = z^c ∘ c_{t-1} + (1 - z^c) ∘ ĉ_t                 zoneout
    h_t    = z^h ∘ h_{t-1} + (1 - z^h) ∘ ĥ_t                 zoneout

Two implementations of the same function:

* :func:`recurrence` — plain tensor code; autograd differentiates it. It is the
  reference (tests) and runs evaluation, where no graph is built.
* :class:`Recurrence` — the same forward plus a hand-written backward through time
  (an ``autograd.Function``). Per step the backward does one matrix product
  (δ_t U for dh_{t-1}); the weight gradient Σ_t δ_tᵀ (h_{t-1} ∘ z_h) is one product over
  all T·B rows after the loop, instead of T thin products accumulated one by one, from
  the h_{t-1} ∘ z_h the forward saved. The forward and backward are plain functions of
  tensors, so ``torch.compile`` can fuse their element-wise work without tracing
  autograd, and the backward's sums run inside the compiled code (no operator of their
  own on the host).

Given b_ih and b_hh (the layer's loop path), gx is W x alone and each step adds
b = b_ih + b_hh, so that the biases' gradients, d b_ih = d b_hh = Σ_t Σ_b δ_t, come out
of the compiled backward instead of costing a sum and a copy per layer.

Moon's ``scale_on_output`` (:class:`MemoryForm`) moves the mask's 1/(1-p) out of the
memory onto the output: the memory sees the 0/1 mask b_m, so a kept unit runs the same
dynamics as at evaluation (docs/variants.md, "Moon's scale").

Masks (:class:`InStepMasks`) are constants (no gradient). gx is (T, B, 4H), or gate-major
(T, 4, B, H) when z_h is untied; h, c are (B, H), or a layer's (1, B, H).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
import torch._dynamo

log = logging.getLogger(__name__)


Mask = torch.Tensor | None


def _at(mask: Mask, t: int) -> Mask:
    """The mask for step ``t`` (a time-constant mask has a leading dimension of 1)."""
    if mask is None:
        return None
    return mask[t] if mask.size(0) > 1 else mask[0]


class MemoryForm(NamedTuple):
    """Where Moon's z_m acts: on the carried memory too (``carried``), and whether its
    1/(1-p) scales the output instead of the memory (``scale_on_output``)."""

    carried: bool = False
    scale_on_output: bool = False


class InStepMasks(NamedTuple):
    """The masks inside the step, time-major; ``None`` where a variant has none.

    ``hidden`` is z_h, (T|1, B|1, H) or (T|1, 4, B|1, H) per gate (untied); ``update``
    z_u (Semeniuta), ``memory`` z_m (Moon), ``zoneout_cell``/``zoneout_hidden`` z^c/z^h,
    each (T|1, B|1, H). A leading 1 means one mask for every step.
    """

    hidden: Mask = None
    update: Mask = None
    memory: Mask = None
    zoneout_cell: Mask = None
    zoneout_hidden: Mask = None

    @property
    def untied(self) -> bool:
        return self.hidden is not None and self.hidden.dim() == 4

    def at(self, t: int) -> InStepMasks:
        """The masks of step ``t``."""
        return InStepMasks(*(_at(mask, t) for mask in self))

    def steps(self, start: int, stop: int) -> InStepMasks:
        """The masks of steps ``start .. stop-1`` (a time-constant mask stays as it is)."""
        return InStepMasks(*(_steps_of(mask, start, stop) for mask in self))


def _steps_of(mask: Mask, start: int, stop: int) -> Mask:
    if mask is None:
        return mask
    return block_input(mask, time_major=True) if mask.size(0) == 1 else piece(mask, start, stop)


def piece(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Steps ``start .. stop-1`` of ``tensor`` as a compiled block's input (see
    :func:`block_input`); a part is a tensor of its own: a view would carry its storage
    offset into dynamo's guards, one compilation per offset."""
    part = tensor.detach()
    if not (start == 0 and stop == tensor.size(0)):
        part = part[start:stop].clone()
    return shape_hints(part, time_major=True)


def _state(h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) or their gradients, (B, H) each and without a graph (the forward detaches
    h0 and c0; a backward's gradients have none), as a compiled block's inputs."""
    return shape_hints(h, time_major=False), shape_hints(c, time_major=False)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """All of a time-major ``tensor`` as a compiled block's input (see :func:`piece`)."""
    return piece(tensor, 0, tensor.size(0))


def block_input(tensor: torch.Tensor, time_major: bool) -> torch.Tensor:
    """``tensor``, detached, with the shape hints of :func:`shape_hints`."""
    return shape_hints(tensor.detach(), time_major)


def shape_hints(part: torch.Tensor, time_major: bool) -> torch.Tensor:
    """``part`` itself, marked with the shape hints that keep the compiled code general:
    the time dimension static (a block's length, K or 1: automatic dynamic shapes would
    make it symbolic once both were seen) and the batch dimensions (all but time and the
    last) dynamic, so training, validation, test and MC batch sizes share one graph."""
    if time_major:
        torch._dynamo.mark_static(part, 0)
    for dim in range(1 if time_major else 0, part.dim() - 1):
        if part.size(dim) > 1:
            torch._dynamo.maybe_mark_dynamic(part, dim)
    return part


def _masked_hidden(h: torch.Tensor, z_h: Mask, untied: bool) -> torch.Tensor:
    """h_{t-1} ∘ z_h as the recurrent product reads it: (B, H), or (4, B, H) per gate."""
    if untied:
        return h.unsqueeze(0) * z_h
    return h if z_h is None else h * z_h


def _step_bias(bias_ih: Mask, bias_hh: Mask, untied: bool) -> Mask:
    """b = b_ih + b_hh, added at every step (None when not given: gx already holds it);
    (4, 1, H) when untied. The layer gives both or neither."""
    if bias_ih is None or bias_hh is None:
        return None
    bias = bias_ih + bias_hh
    return bias.view(4, 1, -1) if untied else bias


def _gate_preactivations(
    gx_t: torch.Tensor, hz: torch.Tensor, weight_hh: torch.Tensor, untied: bool, bias: Mask
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a_i, a_f, a_g, a_o), each (B, H): gx_t + b + U hz with hz = h ∘ z_h, per gate
    when untied."""
    if bias is not None:
        gx_t = gx_t + bias
    if untied:  # gate-major (4, B, H): W_k x + b_k + (h ∘ z_k) U_kᵀ for gate k
        hidden = hz.size(-1)
        u_gates = weight_hh.view(4, hidden, hidden).transpose(1, 2)
        return torch.baddbmm(gx_t, hz, u_gates).unbind(0)
    return torch.addmm(gx_t, hz, weight_hh.t()).chunk(4, dim=1)


def _on_carried_memory(z_m: torch.Tensor, memory: MemoryForm) -> torch.Tensor:
    """The factor on the carried memory: z_m, or its 0/1 b_m with ``scale_on_output``."""
    return (z_m != 0).to(z_m.dtype) if memory.scale_on_output else z_m


class Gates(NamedTuple):
    """The LSTM's gate values at one step, each (B, H): i, f, o = σ(a), g = tanh(a_g)."""

    i: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    o: torch.Tensor


def activate(a_i: torch.Tensor, a_f: torch.Tensor, a_g: torch.Tensor, a_o: torch.Tensor) -> Gates:
    """i, f, o = σ(a_i, a_f, a_o), g = tanh(a_g): the cell's nonlinearity before any post hook."""
    return Gates(torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o))


def builtin_update(
    gates: Gates,
    h: torch.Tensor,
    c: torch.Tensor,
    z_u: Mask,
    z_m: Mask,
    z_c: Mask,
    z_hh: Mask,
    memory: MemoryForm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The built-in rules' post hook: (h_t, c_t, τ) from the gates and (h_{t-1}, c_{t-1}),
    the equations of this module's docstring (Semeniuta's z_u, Moon's z_m, zoneout's
    z^c, z^h); τ is the tanh in ĥ_t (ĥ_t = o ∘ τ, or o ∘ τ ∘ z_m with ``scale_on_output``)."""
    i, f, g, o = gates
    c_hat = torch.addcmul(f * c, i if z_u is None else i * z_u, g)
    if z_m is not None and memory.carried:
        c_hat = c_hat * _on_carried_memory(z_m, memory)
    inside = z_m is not None and not (memory.carried or memory.scale_on_output)
    tau = torch.tanh(c_hat * z_m if inside else c_hat)
    h_new = o * tau * z_m if z_m is not None and memory.scale_on_output else o * tau
    c_new = c_hat if z_c is None else torch.lerp(c_hat, c, z_c)  # z c + (1 - z) ĉ
    if z_hh is not None:
        h_new = torch.lerp(h_new, h, z_hh)
    return h_new, c_new, tau


def _steps(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
    save: bool,
    bias_ih: Mask = None,
    bias_hh: Mask = None,
) -> tuple[torch.Tensor, ...]:
    """The forward loop; with ``save`` it also keeps what the backward needs. The state
    may come as (1, B, H), a layer's (:func:`_as_rows`): h_T and c_T go back so."""
    untied = masks.untied
    bias = _step_bias(bias_ih, bias_hh, untied)
    state_shape = h.shape
    h, c = _as_rows(h), _as_rows(c)
    outputs, gates, c_prev, taus, hz = [], [], [], [], []
    for t in range(gx.size(0)):
        z = masks.at(t)
        h_in = _masked_hidden(h, z.hidden, untied)
        a = _gate_preactivations(gx[t], h_in, weight_hh, untied, bias)
        if save:
            c_prev.append(c)
            hz.append(h_in)
        values = activate(*a)
        h, c, tau = builtin_update(
            values, h, c, z.update, z.memory, z.zoneout_cell, z.zoneout_hidden, memory
        )
        outputs.append(h)
        if save:
            gates.append(torch.stack(values))
            taus.append(tau)
    h, c = h.view(state_shape), c.view(state_shape)
    if not save:
        return torch.stack(outputs), h, c
    saved = (torch.stack(gates), torch.stack(c_prev), torch.stack(taus), torch.stack(hz))
    return (torch.stack(outputs), h, c, *saved)


def _as_rows(state: torch.Tensor) -> torch.Tensor:
    """A state or its gradient as (B, H) rows; a layer's (1, B, H) is viewed so inside the
    compiled code, which costs no operator there (the layer would spend a ``select`` and
    an ``unsqueeze`` on each of h and c)."""
    return state.view(state.shape[-2:])


def recurrence(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
    bias_ih: Mask = None,
    bias_hh: Mask = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the step equations over ``gx`` from (h, c); returns outputs (T, B, H), h_T, c_T.
    With ``bias_ih`` and ``bias_hh``, gx is W x without them and each step adds b_ih + b_hh."""
    outputs, h, c = _steps(gx, h, c, weight_hh, masks, memory, False, bias_ih, bias_hh)
    return outputs, h, c


def forward_saving(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
    bias_ih: Mask = None,
    bias_hh: Mask = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`recurrence` that also returns what the backward needs.

    Returns (outputs, h_T, c_T, gates, c_prev, tau, hz): ``gates`` (T, 4, B, H) holds
    i, f, g, o; ``c_prev`` (T, B, H) holds c_{t-1}; ``tau`` (T, B, H) the tanh in ĥ_t;
    ``hz`` the recurrent products' inputs h_{t-1} ∘ z_h, (T, B, H) or (T, 4, B, H) untied.
    """
    return _steps(gx, h, c, weight_hh, masks, memory, True, bias_ih, bias_hh)


def backward_through_time(
    d_outputs: torch.Tensor,
    d_h: torch.Tensor,
    d_c: torch.Tensor,
    gates: torch.Tensor,
    c_prev: torch.Tensor,
    tau: torch.Tensor,
    hz: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
) -> tuple[torch.Tensor, ...]:
    """Gradients (d gx, d h0, d c0, d U, d b_ih, d b_hh) from those of (outputs, h_T, c_T).

    Step t backwards, with dh, dc the gradients reaching h_t, c_t (σ' = s(1-s)):

        dĥ = (1 - z^h) dh           dh_{t-1} = z^h dh + Σ_k (δ_k U_k) ∘ z_h,k
        dτ = dĥ ∘ o ∘ (1 - τ²)      dĉ = (1 - z^c) dc + dτ ∘ z_m   (z_m ∘ (…) if carried)
        δ_i = dĉ z_u g σ'(i)    δ_f = dĉ c_{t-1} σ'(f)    δ_g = dĉ z_u i (1 - g²)
        δ_o = dĥ τ σ'(o)        dc_{t-1} = z^c dc + dĉ ∘ f
        d gx_t = δ_t            dU = Σ_t δ_tᵀ (h_{t-1} ∘ z_h)
        d b_ih = d b_hh = Σ_t Σ_b δ_t

    With ``scale_on_output``, dĥ is first multiplied by z_m (ĥ = o ∘ τ ∘ z_m), and then
    dĉ = (1 - z^c) dc + dτ   (b_m ∘ (…) if carried).

    The steps are :func:`backward_steps` and the sums over the rows :func:`weight_gradient`,
    one product over all T·B rows (``hz``: the forward's h_{t-1} ∘ z_h). Compiled, it runs
    block by block, each block's sums added (:class:`Recurrence`).
    """
    deltas, dh, dc = backward_steps(
        d_outputs, d_h, d_c, gates, c_prev, tau, weight_hh, masks, memory
    )
    d_gx, d_weight, d_bias = weight_gradient(deltas, hz, masks.untied)
    # two tensors: autograd would copy one gradient given to two parameters, on the host
    return d_gx, dh, dc, d_weight, d_bias, d_bias.clone()


def backward_steps(
    d_outputs: torch.Tensor,
    d_h: torch.Tensor,
    d_c: torch.Tensor,
    gates: torch.Tensor,
    c_prev: torch.Tensor,
    tau: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The steps of :func:`backward_through_time` over the given steps, last first.

    Returns (δ, dh, dc): δ (T, 4, B, H) gate-major when untied, else (T, B, 4, H), and the
    gradients reaching the state before the first step, accumulated in fp32 (or the
    inputs' own wider dtype) whatever the precision of the saved activations.
    """
    steps = d_outputs.size(0)
    untied = masks.untied
    hidden = d_outputs.size(-1)
    u_gates = weight_hh.view(4, hidden, hidden)
    wide = torch.promote_types(d_h.dtype, torch.float32)
    state_shape = d_h.shape
    dh, dc = _as_rows(d_h).to(wide), _as_rows(d_c).to(wide)
    deltas = []
    for t in range(steps - 1, -1, -1):
        dh = dh + d_outputs[t]
        i, f, g, o = gates[t].unbind(0)
        z = masks.at(t)
        z_c, z_hh, z_u, z_m = z.zoneout_cell, z.zoneout_hidden, z.update, z.memory
        dh_hat = dh if z_hh is None else dh * (1 - z_hh)
        dc_hat = dc if z_c is None else dc * (1 - z_c)
        dh_out = dh_hat * z_m if z_m is not None and memory.scale_on_output else dh_hat
        d_tanh = dh_out * o * (1 - tau[t] * tau[t])
        if z_m is not None and not (memory.carried or memory.scale_on_output):
            d_tanh = d_tanh * z_m  # τ = tanh(ĉ ∘ z_m)
        dc_hat = dc_hat + d_tanh
        if z_m is not None and memory.carried:
            dc_hat = dc_hat * _on_carried_memory(z_m, memory)
        d_update = dc_hat if z_u is None else dc_hat * z_u
        delta = torch.stack(
            (
                d_update * g * i * (1 - i),
                dc_hat * c_prev[t] * f * (1 - f),
                d_update * i * (1 - g * g),
                dh_out * tau[t] * o * (1 - o),
            ),
            dim=0 if untied else 1,
        )  # (4, B, H) gate-major when untied, else (B, 4, H)
        deltas.append(delta)
        dc_next = dc_hat * f
        if z_c is not None:
            dc_next = dc_next + dc * z_c
        z_h = z.hidden
        if untied:
            dh_next = (torch.bmm(delta, u_gates) * z_h).sum(0)
        else:
            dh_next = torch.mm(delta.reshape(delta.size(0), 4 * hidden), weight_hh)
            if z_h is not None:
                dh_next = dh_next * z_h
        if z_hh is not None:
            dh_next = dh_next + dh * z_hh
        dh, dc = dh_next.to(wide), dc_next.to(wide)
    return torch.stack(deltas[::-1]), dh.view(state_shape), dc.view(state_shape)


def weight_gradient(
    deltas: torch.Tensor, hz: torch.Tensor, untied: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d gx, dU, d b) from the δ of the steps: dU = Σ_t δ_tᵀ (h_{t-1} ∘ z_h), one product
    over all T·B rows (per gate, as a batched product, when untied), and d b = Σ_t Σ_b δ_t,
    both accumulated in fp32 whatever the autocast outside."""
    wide = torch.promote_types(deltas.dtype, torch.float32)
    with torch.autocast(deltas.device.type, enabled=False):
        if untied:  # deltas (T, 4, B, H), hz (T, 4, B, H)
            steps, _, batch, hidden = deltas.shape
            rows = deltas.transpose(0, 1).reshape(4, steps * batch, hidden).to(wide)
            inputs = hz.transpose(0, 1).reshape(4, steps * batch, hidden).to(wide)
            d_weight = torch.bmm(rows.transpose(1, 2), inputs).reshape(4 * hidden, hidden)
            return deltas, d_weight, rows.sum(1).reshape(4 * hidden)
        steps, batch, _, hidden = deltas.shape  # (T, B, 4, H)
        d_gx = deltas.reshape(steps, batch, 4 * hidden)
        rows = d_gx.reshape(steps * batch, 4 * hidden).to(wide)
        d_weight = rows.t() @ hz.reshape(steps * batch, hidden).to(wide)
        return d_gx, d_weight, rows.sum(0)


class _Autocast(NamedTuple):
    """The autocast state a forward ran under, for its backward (autograd runs the backward
    outside the forward's context)."""

    device_type: str
    enabled: bool
    dtype: torch.dtype

    @classmethod
    def current(cls, tensor: torch.Tensor) -> _Autocast:
        kind = tensor.device.type
        return cls(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))

    def __call__(self, enabled: bool | None = None) -> torch.autocast:
        on = self.enabled if enabled is None else enabled and self.enabled
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=on)


_ZEROS: dict[tuple[str, torch.Size, torch.dtype, torch.device], torch.Tensor] = {}


def _zeros(name: str, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` with ``like``'s dtype and device, made once per (``name``, shape)
    and read only: the gradient of a final state that the loss does not use (the trainer
    detaches it), without an operator per step. The name keeps dh and dc two tensors:
    compiled code given one tensor twice guards on it (a recompilation when they differ)."""
    key = (name, shape, like.dtype, like.device)
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return _ZEROS[key]


def _total(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the blocks' parts of one gradient (one block: itself)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class _RecurrenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        impl: Recurrence,
        gx: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        weight_hh: torch.Tensor,
        bias_ih: Mask,
        bias_hh: Mask,
        *masks_and_flag: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *flat_masks, memory = masks_and_flag  # flat, so that autograd sees every tensor
        masks = InStepMasks(*flat_masks)
        spans = impl.spans(gx.size(0))
        h, c, pieces, saved = h0.detach(), c0.detach(), [], []
        for first, stop in spans:
            out, h, c, *kept = impl._run(
                "forward",
                piece(gx, first, stop),
                *_state(h, c),
                weight_hh,
                masks.steps(first, stop),
                memory,
                bias_ih,
                bias_hh,
            )
            pieces.append(out)
            saved.extend(kept)  # gates, c_prev, tau, hz of the block
        outputs = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        ctx.impl, ctx.memory, ctx.spans = impl, memory, spans
        ctx.mask_count = len(flat_masks)
        ctx.shapes = (outputs.shape, h0.shape)
        ctx.autocast = _Autocast.current(gx)
        ctx.save_for_backward(weight_hh, *flat_masks, *saved)
        ctx.set_materialize_grads(False)  # an unused final state's gradient: _zeros, kept
        return outputs, h.clone(), c

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_outputs: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor
    ) -> tuple[Any, ...]:
        weight_hh, *rest = ctx.saved_tensors
        masks = InStepMasks(*rest[: ctx.mask_count])
        saved = rest[ctx.mask_count :]
        out_shape, state_shape = ctx.shapes
        d_outputs = _zeros("outputs", out_shape, weight_hh) if d_outputs is None else d_outputs
        d_outputs = d_outputs.contiguous()
        dh = _zeros("h", state_shape, weight_hh) if d_h is None else d_h
        dc = _zeros("c", state_shape, weight_hh) if d_c is None else d_c
        parts: list[tuple[torch.Tensor, ...]] = []
        with ctx.autocast():  # the step's products at the forward's precision
            for index in range(len(ctx.spans) - 1, -1, -1):
                first, stop = ctx.spans[index]
                d_gx, dh, dc, *sums = ctx.impl._run(
                    "backward",
                    piece(d_outputs, first, stop),
                    *_state(dh, dc),
                    *(whole(t) for t in saved[4 * index : 4 * index + 4]),
                    weight_hh,
                    masks.steps(first, stop),
                    ctx.memory,
                )
                parts.append((d_gx, *sums))
        d_gx, d_weight, d_bias_ih, d_bias_hh = (
            list(part) for part in zip(*parts[::-1], strict=True)
        )
        d_gx = d_gx[0] if len(d_gx) == 1 else torch.cat(d_gx)
        grads = [_total(d_weight), _total(d_bias_ih), _total(d_bias_hh)]
        needs = ctx.needs_input_grad[4:7]
        grads = [grad if need else None for grad, need in zip(grads, needs, strict=True)]
        return (None, d_gx, dh, dc, *grads, *([None] * (ctx.mask_count + 1)))


def _own_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own.

    ``torch.compile`` keeps its compiled graphs, and their recompile limit (8), per code
    object: every layer compiling the same module-level function shares one cache, and
    a process holding many configurations (a benchmark of every variant) would hit the
    limit and run eagerly. A copy per configuration gives each its own cache.
    """
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


#: What a recurrence runs: the forward that saves for the backward, the backward's steps,
#: and the forward without a graph (evaluation).
_ROLES: dict[str, Callable[..., Any]] = {
    "forward": forward_saving,
    "backward": backward_through_time,
    "infer": recurrence,
}


#: Compiled functions per (configuration key, role, block length), shared by the layers
#: that match, each with the plain copy whose code object holds dynamo's cache.
_COMPILED: dict[Hashable, tuple[Callable[..., Any], Callable[..., Any]]] = {}


#: The block lengths under the window's: a remainder runs as blocks of 5, then single
#: steps (docs/performance.md).
FINE_BLOCKS = (5, 1)


def block_lengths(block: int) -> tuple[int, ...]:
    """The ladder of compiled block lengths, longest first: ``block``, 5 and 1."""
    if block < 1:
        raise ValueError(f"a compiled block needs at least one step, got {block}")
    return tuple(sorted({block, *(b for b in FINE_BLOCKS if b < block)}, reverse=True))


class Recurrence:
    """:func:`recurrence` with the hand-written backward of :func:`backward_through_time`.

    ``compile_options`` (a dict, possibly empty) compiles the forward, the backward's
    steps and the graph-free forward of evaluation with ``torch.compile``; ``None`` runs
    them eagerly, over the whole window. Compiled, a window of T steps runs as blocks of
    the ladder :func:`block_lengths` (``block``, then 5, then 1), as many of the longest
    as fit, carrying (h, c) from one to the next: the same equations in the same order,
    and code that depends only on the block lengths, so variable BPTT, a short last window
    and evaluation reuse the same few compilations. The backward of each block returns
    its d gx, its product for dU and its sums for the biases (one product over the
    block's K·B rows; a window of one block, the usual case, has one), which the window
    adds. Each (role, block length) compiles its own copy of the function: its own cache
    and recompile limit.

    Layers giving the same ``key`` (their configuration) share the compiled functions.
    If compilation gives up (the recompile limit is hit), the recurrence logs a warning
    and runs eagerly from then on: :attr:`mode` says ``eager``.
    """

    def __init__(
        self, compile_options: dict[str, Any] | None = None, key: Hashable = None, block: int = 35
    ) -> None:
        self.blocks = block_lengths(block)
        self.compiled = compile_options is not None
        self.options = dict(compile_options or {})
        self.key = (key, tuple(sorted(self.options.items())))
        #: CUDA graphs (``mode="reduce-overhead"``): a replay overwrites the outputs of the
        #: one before, and a window replays each block's graph several times, so what a
        #: block returns is copied out (:meth:`_run`).
        self.cudagraphs = self.options.get("mode") == "reduce-overhead"

    @property
    def mode(self) -> str:
        """``compiled`` or ``eager`` (never compiled, or fell back)."""
        return "compiled" if self.compiled else "eager"

    @property
    def copies(self) -> list[Callable[..., Any]]:
        """The plain copies compiled so far for this configuration."""
        return [copy for (key, *_), (_, copy) in _COMPILED.items() if key == self.key]

    @property
    def compilations(self) -> int:
        """Graphs dynamo holds for this recurrence's configuration (0 when eager)."""
        from torch._dynamo.eval_frame import _get_total_cache_entry_count

        return sum(_get_total_cache_entry_count(fn.__code__) for fn in self.copies)

    def spans(self, steps: int) -> list[tuple[int, int]]:
        """The (first, stop) steps of each piece a window of ``steps`` runs as."""
        if not self.compiled:
            return [(0, steps)]
        spans, first = [], 0
        for length in self.blocks:
            while steps - first >= length:
                spans.append((first, first + length))
                first += length
        return spans

    def _function(self, which: Hashable) -> Callable[..., Any]:
        """The plain function of a role (:data:`_ROLES`)."""
        return _ROLES[which]  # type: ignore[index]

    def _compiled(self, which: Hashable, length: int) -> Callable[..., Any]:
        cache_key = (self.key, which, length)
        if cache_key not in _COMPILED:
            copy = _own_copy(self._function(which))
            _COMPILED[cache_key] = (torch.compile(copy, **self.options), copy)
        return _COMPILED[cache_key][0]

    def _run(self, which: Hashable, *args: Any) -> tuple[torch.Tensor, ...]:
        """``which``'s function on ``args`` (a block: its first argument is time-major)."""
        if not self.compiled:
            return self._function(which)(*args)
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                result = self._compiled(which, args[0].size(0))(*args)
            return tuple(t.clone() for t in result) if self.cudagraphs else result
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            log.warning(
                "torch.compile hit its recompile limit for this LSTM layer's %s; the loop "
                "path now runs eagerly (slower; summary field loop_mode=eager)",
                which,
            )
            self.compiled = self.cudagraphs = False
            return self._run(which, *args)

    def infer(
        self,
        gx: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        weight_hh: torch.Tensor,
        masks: InStepMasks,
        memory: MemoryForm,
        bias_ih: Mask = None,
        bias_hh: Mask = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`recurrence` without a graph (evaluation), block by block when compiled."""
        pieces, h, c = [], h.detach(), c.detach()
        for first, stop in self.spans(gx.size(0)):
            out, h, c = self._run(
                "infer",
                piece(gx, first, stop),
                *_state(h, c),
                weight_hh,
                masks.steps(first, stop),
                memory,
                bias_ih,
                bias_hh,
            )
            pieces.append(out)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), h, c

    def __call__(
        self,
        gx: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        weight_hh: torch.Tensor,
        masks: InStepMasks,
        memory: MemoryForm,
        bias_ih: Mask = None,
        bias_hh: Mask = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same inputs and outputs as :func:`recurrence`, differentiable (in the biases
        too, when given)."""
        return _RecurrenceFunction.apply(
            self, gx, h, c, weight_hh, bias_ih, bias_hh, *masks, memory
        )
