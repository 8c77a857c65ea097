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
  all T·B rows after the loop, instead of T thin products accumulated one by one. The
  forward and backward are plain functions of tensors, so ``torch.compile`` can fuse
  their element-wise work without tracing autograd.

Moon's ``scale_on_output`` (:class:`MemoryForm`) moves the mask's 1/(1-p) out of the
memory onto the output: the memory sees the 0/1 mask b_m, so a kept unit runs the same
dynamics as at evaluation (docs/variants.md, "Moon's scale").

Masks (:class:`InStepMasks`) are constants (no gradient). gx is (T, B, 4H), or gate-major
(T, 4, B, H) when z_h is untied; h, c are (B, H).
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


def _gate_preactivations(
    gx_t: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, z_h: Mask, untied: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a_i, a_f, a_g, a_o), each (B, H): gx_t + U (h ∘ z_h), per gate when untied."""
    if untied:  # gate-major (4, B, H): W_k x + b_k + (h ∘ z_k) U_kᵀ for gate k
        hidden = h.size(-1)
        u_gates = weight_hh.view(4, hidden, hidden).transpose(1, 2)
        return torch.baddbmm(gx_t, h.unsqueeze(0) * z_h, u_gates).unbind(0)
    a = torch.addmm(gx_t, h if z_h is None else h * z_h, weight_hh.t())
    return a.chunk(4, dim=1)


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
) -> tuple[torch.Tensor, ...]:
    """The forward loop; with ``save`` it also keeps what the backward needs."""
    untied = masks.untied
    outputs, gates, c_prev, taus = [], [], [], []
    for t in range(gx.size(0)):
        z = masks.at(t)
        a = _gate_preactivations(gx[t], h, weight_hh, z.hidden, untied)
        if save:
            c_prev.append(c)
        values = activate(*a)
        h, c, tau = builtin_update(
            values, h, c, z.update, z.memory, z.zoneout_cell, z.zoneout_hidden, memory
        )
        outputs.append(h)
        if save:
            gates.append(torch.stack(values))
            taus.append(tau)
    if not save:
        return torch.stack(outputs), h, c
    return (
        torch.stack(outputs),
        h,
        c,
        torch.stack(gates),
        torch.stack(c_prev),
        torch.stack(taus),
    )


def recurrence(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the step equations over ``gx`` from (h, c); returns outputs (T, B, H), h_T, c_T."""
    outputs, h, c = _steps(gx, h, c, weight_hh, masks, memory, save=False)
    return outputs, h, c


def forward_saving(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
) -> tuple[torch.Tensor, ...]:
    """:func:`recurrence` that also returns what the backward needs.

    Returns (outputs, h_T, c_T, gates, c_prev, tau): ``gates`` (T, 4, B, H) holds
    i, f, g, o; ``c_prev`` (T, B, H) holds c_{t-1}; ``tau`` (T, B, H) the tanh in ĥ_t.
    """
    return _steps(gx, h, c, weight_hh, masks, memory, save=True)


def backward_through_time(
    d_outputs: torch.Tensor,
    d_h: torch.Tensor,
    d_c: torch.Tensor,
    h0: torch.Tensor,
    outputs: torch.Tensor,
    gates: torch.Tensor,
    c_prev: torch.Tensor,
    tau: torch.Tensor,
    weight_hh: torch.Tensor,
    masks: InStepMasks,
    memory: MemoryForm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (d gx, d h0, d c0, d U) from those of (outputs, h_T, c_T).

    Step t backwards, with dh, dc the gradients reaching h_t, c_t (σ' = s(1-s)):

        dĥ = (1 - z^h) dh           dh_{t-1} = z^h dh + Σ_k (δ_k U_k) ∘ z_h,k
        dτ = dĥ ∘ o ∘ (1 - τ²)      dĉ = (1 - z^c) dc + dτ ∘ z_m   (z_m ∘ (…) if carried)
        δ_i = dĉ z_u g σ'(i)    δ_f = dĉ c_{t-1} σ'(f)    δ_g = dĉ z_u i (1 - g²)
        δ_o = dĥ τ σ'(o)        dc_{t-1} = z^c dc + dĉ ∘ f
        d gx_t = δ_t            dU = Σ_t δ_tᵀ (h_{t-1} ∘ z_h)

    With ``scale_on_output``, dĥ is first multiplied by z_m (ĥ = o ∘ τ ∘ z_m), and then
    dĉ = (1 - z^c) dc + dτ   (b_m ∘ (…) if carried).

    The steps are :func:`backward_steps` (one window or, compiled, block by block) and
    the weight gradient is :func:`weight_gradient`, one product over all T·B rows.
    """
    deltas, dh, dc = backward_steps(
        d_outputs, d_h, d_c, gates, c_prev, tau, weight_hh, masks, memory
    )
    d_gx, d_weight = weight_gradient(deltas, h0, outputs, masks)
    return d_gx, dh, dc, d_weight


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
    dh, dc = d_h.to(wide), d_c.to(wide)
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
    return torch.stack(deltas[::-1]), dh, dc


def weight_gradient(
    deltas: torch.Tensor, h0: torch.Tensor, outputs: torch.Tensor, masks: InStepMasks
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d gx, dU) from the window's δ: dU = Σ_t δ_tᵀ (h_{t-1} ∘ z_h), one product over all
    T·B rows (per gate, as a batched product, when untied), accumulated in fp32."""
    steps, batch, hidden = outputs.shape
    h_prev = torch.cat((h0.unsqueeze(0).to(outputs.dtype), outputs[:-1]))  # (T, B, H)
    wide = torch.promote_types(deltas.dtype, torch.float32)
    if masks.untied:
        hz = (h_prev.unsqueeze(1) * masks.hidden).transpose(0, 1).reshape(4, steps * batch, hidden)
        d_weight = torch.bmm(
            deltas.transpose(0, 1).reshape(4, steps * batch, hidden).transpose(1, 2).to(wide),
            hz.to(wide),
        ).reshape(4 * hidden, hidden)
        return deltas, d_weight
    hz = h_prev if masks.hidden is None else h_prev * masks.hidden
    d_gx = deltas.reshape(steps, batch, 4 * hidden)
    rows = d_gx.reshape(steps * batch, 4 * hidden).to(wide)
    d_weight = rows.t() @ hz.reshape(steps * batch, hidden).to(wide)
    return d_gx, d_weight


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


_ZEROS: dict[tuple[torch.Size, torch.dtype, torch.device], torch.Tensor] = {}


def _zeros(like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped as ``like``, made once per shape and read only: the gradient of a
    final state that the loss does not use (the trainer detaches it), without an operator
    per step."""
    key = (like.shape, like.dtype, like.device)
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros_like(like, memory_format=torch.contiguous_format)
    return _ZEROS[key]


class _RecurrenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        impl: Recurrence,
        gx: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
        weight_hh: torch.Tensor,
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
            )
            pieces.append(out)
            saved.extend(kept)  # gates, c_prev, tau of the block
        outputs = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        ctx.impl, ctx.memory, ctx.spans = impl, memory, spans
        ctx.mask_count = len(flat_masks)
        ctx.autocast = _Autocast.current(gx)
        ctx.save_for_backward(h0, outputs, weight_hh, *flat_masks, *saved)
        ctx.set_materialize_grads(False)  # an unused final state's gradient: _zeros, kept
        return outputs, h.clone(), c

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_outputs: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor
    ) -> tuple[Any, ...]:
        h0, outputs, weight_hh, *rest = ctx.saved_tensors
        masks = InStepMasks(*rest[: ctx.mask_count])
        saved = rest[ctx.mask_count :]
        d_outputs = (_zeros(outputs) if d_outputs is None else d_outputs).contiguous()
        d_h = _zeros(h0) if d_h is None else d_h
        d_c = _zeros(h0) if d_c is None else d_c
        deltas: list[torch.Tensor] = []
        dh, dc = d_h, d_c
        with ctx.autocast():  # the step's products at the forward's precision
            for index in range(len(ctx.spans) - 1, -1, -1):
                first, stop = ctx.spans[index]
                delta, dh, dc = ctx.impl._run(
                    "backward",
                    piece(d_outputs, first, stop),
                    *_state(dh, dc),
                    *(whole(t) for t in saved[3 * index : 3 * index + 3]),
                    weight_hh,
                    masks.steps(first, stop),
                    ctx.memory,
                )
                deltas.append(delta)
        all_deltas = deltas[0] if len(deltas) == 1 else torch.cat(deltas[::-1])
        with ctx.autocast(enabled=False):  # Σ over T·B rows in fp32
            d_gx, d_weight = weight_gradient(all_deltas, h0, outputs, masks)
        return (None, d_gx, dh, dc, d_weight, *([None] * (ctx.mask_count + 1)))


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
    "backward": backward_steps,
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
    and evaluation reuse the same few compilations. The weight gradient stays one
    product over the whole window. Each (role, block length) compiles its own copy of
    the function: its own cache and recompile limit.

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same inputs and outputs as :func:`recurrence`, differentiable."""
        return _RecurrenceFunction.apply(
            self,
            gx,
            h,
            c,
            weight_hh,
            *masks,
            memory,
        )
