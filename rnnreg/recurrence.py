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


def _cell(
    a_i: torch.Tensor,
    a_f: torch.Tensor,
    a_g: torch.Tensor,
    a_o: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    z_u: Mask,
    z_m: Mask,
    z_c: Mask,
    z_hh: Mask,
    memory: MemoryForm,
) -> tuple[torch.Tensor, ...]:
    """One step after the gate pre-activations: (h_t, c_t, i, f, g, o, τ) with τ the tanh
    in ĥ_t (ĥ_t = o ∘ τ, or o ∘ τ ∘ z_m with ``scale_on_output``)."""
    i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
    g = torch.tanh(a_g)
    c_hat = torch.addcmul(f * c, i if z_u is None else i * z_u, g)
    if z_m is not None and memory.carried:
        c_hat = c_hat * _on_carried_memory(z_m, memory)
    inside = z_m is not None and not (memory.carried or memory.scale_on_output)
    tau = torch.tanh(c_hat * z_m if inside else c_hat)
    h_new = o * tau * z_m if z_m is not None and memory.scale_on_output else o * tau
    c_new = c_hat if z_c is None else torch.lerp(c_hat, c, z_c)  # z c + (1 - z) ĉ
    if z_hh is not None:
        h_new = torch.lerp(h_new, h, z_hh)
    return h_new, c_new, i, f, g, o, tau


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
        h, c, i, f, g, o, tau = _cell(
            *a, h, c, z.update, z.memory, z.zoneout_cell, z.zoneout_hidden, memory
        )
        outputs.append(h)
        if save:
            gates.append(torch.stack((i, f, g, o)))
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
    """
    steps, batch, hidden = outputs.shape
    untied = masks.untied
    u_gates = weight_hh.view(4, hidden, hidden)
    dh, dc = d_h, d_c
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
            dh_next = torch.mm(delta.view(batch, 4 * hidden), weight_hh)
            if z_h is not None:
                dh_next = dh_next * z_h
        if z_hh is not None:
            dh_next = dh_next + dh * z_hh
        dh, dc = dh_next, dc_next
    delta_all = torch.stack(deltas[::-1])  # (T, 4, B, H) untied, else (T, B, 4, H)
    h_prev = torch.cat((h0.unsqueeze(0), outputs[:-1]))  # (T, B, H)
    if untied:
        hz = (h_prev.unsqueeze(1) * masks.hidden).transpose(0, 1).reshape(4, steps * batch, hidden)
        d_weight = torch.bmm(
            delta_all.transpose(0, 1).reshape(4, steps * batch, hidden).transpose(1, 2), hz
        ).reshape(4 * hidden, hidden)
        d_gx = delta_all
    else:
        hz = h_prev if masks.hidden is None else h_prev * masks.hidden
        d_gx = delta_all.view(steps, batch, 4 * hidden)
        d_weight = d_gx.reshape(steps * batch, 4 * hidden).t() @ hz.reshape(steps * batch, hidden)
    return d_gx, dh, dc, d_weight


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
        *masks, memory = masks_and_flag  # flat, so that autograd sees every tensor
        outputs, h, c, gates, c_prev, tau = impl._run(
            "forward", gx, h0, c0, weight_hh, InStepMasks(*masks), memory
        )
        ctx.impl = impl
        ctx.memory = memory
        ctx.mask_count = len(masks)
        ctx.save_for_backward(h0, outputs, gates, c_prev, tau, weight_hh, *masks)
        return outputs, h.clone(), c

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_outputs: torch.Tensor, d_h: torch.Tensor, d_c: torch.Tensor
    ) -> tuple[Any, ...]:
        h0, outputs, gates, c_prev, tau, weight_hh, *masks = ctx.saved_tensors
        d_gx, d_h0, d_c0, d_weight = ctx.impl._run(
            "backward",
            d_outputs.contiguous(),
            d_h,
            d_c,
            h0,
            outputs,
            gates,
            c_prev,
            tau,
            weight_hh,
            InStepMasks(*masks),
            ctx.memory,
        )
        return (None, d_gx, d_h0, d_c0, d_weight, *([None] * (ctx.mask_count + 1)))


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


#: Compiled (forward, backward) per configuration key, shared by the layers that match it.
_COMPILED: dict[Hashable, tuple[Callable[..., Any], Callable[..., Any]]] = {}


class Recurrence:
    """:func:`recurrence` with the hand-written backward of :func:`backward_through_time`.

    ``compile_options`` (a dict, possibly empty) compiles the forward and the backward
    with ``torch.compile``; ``None`` runs them eagerly. Layers giving the same ``key``
    (their configuration) share one compiled pair; each key has its own compile cache.
    If compilation gives up (the recompile limit is hit), the recurrence logs a warning
    and runs eagerly from then on: :attr:`mode` says ``eager`` instead of ``compiled``.
    """

    def __init__(self, compile_options: dict[str, Any] | None = None, key: Hashable = None) -> None:
        self.forward_fn: Callable[..., tuple[torch.Tensor, ...]] = forward_saving
        self.backward_fn: Callable[..., tuple[torch.Tensor, ...]] = backward_through_time
        self.compiled = compile_options is not None
        if compile_options is not None:
            cache_key = (key, tuple(sorted(compile_options.items())))
            if cache_key not in _COMPILED:
                _COMPILED[cache_key] = (
                    torch.compile(_own_copy(forward_saving), **compile_options),
                    torch.compile(_own_copy(backward_through_time), **compile_options),
                )
            self.forward_fn, self.backward_fn = _COMPILED[cache_key]

    @property
    def mode(self) -> str:
        """``compiled`` or ``eager`` (never compiled, or fell back)."""
        return "compiled" if self.compiled else "eager"

    def _run(self, which: str, *args: Any) -> tuple[torch.Tensor, ...]:
        fn = self.forward_fn if which == "forward" else self.backward_fn
        if not self.compiled:
            return fn(*args)
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return fn(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            log.warning(
                "torch.compile hit its recompile limit for this LSTM layer's %s; the loop "
                "path now runs eagerly (slower; summary field loop_mode=eager)",
                which,
            )
            self.compiled = False
            self.forward_fn, self.backward_fn = forward_saving, backward_through_time
            return self._run(which, *args)

    def __call__(
        self,
        gx: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        weight_hh: torch.Tensor,
        masks: InStepMasks,
        memory: MemoryForm,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same inputs and outputs as :func:`recurrence`."""
        return _RecurrenceFunction.apply(
            self,
            gx,
            h,
            c,
            weight_hh,
            *masks,
            memory,
        )
