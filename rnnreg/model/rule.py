"""The plug-in interface of an in-step rule: a cell, two hooks and a declaration of masks.

A **cell** defines its step and its state and the points where a rule acts. The LSTM cell
(docs/variants.md, equations of :mod:`rnnreg.model.recurrence`), at step t:

    x'      = pre_input(x, z)                 once per window, before W x' + b
    U'      = pre_weights(U, z)               once per forward pass
    h'      = pre_hidden(h_{t-1}, z_t)        (B, H), or (4, B, H): one per gate
    a_t     = W x'_t + b + U' h'              (per gate k when h' has a gate dimension)
    i, f, o = σ(a_i, a_f, a_o),  g = tanh(a_g)
    h_t, c_t = post(gates, h_{t-1}, c_{t-1}, z_t)

The default hooks are the plain LSTM (``post``: c_t = f ∘ c_{t-1} + i ∘ g,
h_t = o ∘ tanh(c_t)). The GRU cell (``nn.GRU``'s gate order r, z, n; rnnreg/model/gru.py)
has three gates and no memory; the same ``pre_*`` hooks act on its three products, and
``post_gru`` ends its step:

    x'      = pre_input(x, z)                 (T, B, n), or (T, 3, B, n)
    h'      = pre_hidden(h_{t-1}, z_t)        (B, H), or (3, B, H)
    r, u    = σ(W_r x'_t + b_ir + U_r h'_r + b_hr),  σ(W_z x'_t + b_iz + U_z h'_z + b_hz)
    n       = tanh(W_n x'_t + b_in + r ∘ (U_n h'_n + b_hn))
    h_t     = post_gru((r, u, n), h_{t-1}, z_t)      default (1 - u) ∘ n + u ∘ h_{t-1}

(u is ``nn.GRU``'s update gate z, renamed here so as not to be read as a mask.) A rule
overrides the hooks it needs with plain tensor code: the generic loop path
(:mod:`rnnreg.model.generic`) differentiates it with autograd and compiles it with
``torch.compile`` in the same blocks as the hand-written path.

A rule **declares its masks** (:class:`MaskSpec`): the settings key of the rate, the
granularity, per gate or shared, whether kept units are scaled, and what evaluation uses.
The masks are drawn in the declared order by the one mask helper
(:mod:`rnnreg.model.regularizers.masks`) and reach the hooks as ``z``, a name → mask mapping
(None where a rate is 0). ``rnnreg verify`` checks every draw against its declaration.

A plug-in registers its rule through the entry-point group ``rnnreg.variants``
(docs/extending.md); :class:`BuiltinRule` expresses the built-in variants through the
same hooks, so the generic path runs them too (``model.lstm_impl=generic``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from rnnreg.config.dropout import Granularity, InStepDropout
from rnnreg.model.recurrence import Gates, MemoryForm, builtin_update
from rnnreg.model.regularizers.masks import (
    MCDropout,
    draw_activation_mask,
    draw_mask,
    held_or_drawn,
)

Mask = torch.Tensor | None
Masks = Mapping[str, Mask]


class Evaluation(str, Enum):
    """What a mask becomes outside training: its ``expectation`` E[z], a given ``value``,
    or ``mc``: it stays drawn (the rule has no deterministic evaluation)."""

    expectation = "expectation"
    value = "value"
    mc = "mc"


class Units(str, Enum):
    """What a mask's last dimension runs over: the layer's ``input`` (n) or ``hidden`` (H)
    units, or the entries of ``weight_hh`` U (4H, H), one mask per forward pass."""

    input = "input"
    hidden = "hidden"
    weight_hh = "weight_hh"


class LinearPoint(str, Enum):
    """Where a rule's masks enter linearly, so that evaluation by expectation is exact there
    (``rnnreg verify`` compares evaluation with the Monte Carlo mean at this tensor):
    ``preactivation`` a_t (a pre hook), ``state`` (h_t, c_t) (zoneout-like post hooks),
    ``memory`` c_t (Semeniuta-like post hooks)."""

    preactivation = "preactivation"
    state = "state"
    memory = "memory"


@dataclass(frozen=True)
class MaskSpec:
    """The declaration of one mask. ``rate`` and a string ``granularity`` name settings keys.

    The mask z has P(z = 0) = p with p the rate, kept entries 1/(1-p) when ``scaled``,
    else 1; with ``keep`` the rate is instead the probability of z = 1 (zoneout's keep
    probability), never scaled. ``per_gate`` draws one mask per gate (a gate dimension
    after time). ``evaluation`` says what the mask is outside training; ``value`` goes
    with :attr:`Evaluation.value`.
    """

    name: str
    rate: str
    granularity: Granularity | str = Granularity.sequence
    units: Units = Units.hidden
    per_gate: bool = False
    scaled: bool = True
    keep: bool = False
    evaluation: Evaluation = Evaluation.expectation
    value: float | None = None

    def resolve(self, settings: Any) -> DeclaredMask:
        """The mask with its rate and granularity read from ``settings``."""
        granularity = self.granularity
        if isinstance(granularity, str) and granularity not in Granularity.__members__:
            granularity = getattr(settings, granularity)
        return DeclaredMask(
            name=self.name,
            rate=float(getattr(settings, self.rate)),
            granularity=Granularity(granularity),
            units=Units(self.units),
            per_gate=self.per_gate,
            scaled=self.scaled and not self.keep,
            keep=self.keep,
            evaluation=Evaluation(self.evaluation),
            value=self.value,
        )


@dataclass(frozen=True)
class DeclaredMask:
    """A :class:`MaskSpec` with its values: what ``rnnreg verify`` checks the draws against."""

    name: str
    rate: float
    granularity: Granularity
    units: Units = Units.hidden
    per_gate: bool = False
    scaled: bool = True
    keep: bool = False
    evaluation: Evaluation = Evaluation.expectation
    value: float | None = None

    @property
    def p_zero(self) -> float:
        """P(z = 0)."""
        return 1.0 - self.rate if self.keep else self.rate

    @property
    def kept_value(self) -> float:
        """The value of a nonzero entry: 1/(1-p) when scaled, else 1."""
        return 1.0 / (1.0 - self.rate) if self.scaled else 1.0

    @property
    def expectation(self) -> float:
        """E[z]: 1 when scaled; 1 - p for a drop mask, p for a keep mask."""
        return 1.0 if self.scaled else 1.0 - self.p_zero

    @property
    def evaluation_value(self) -> float | None:
        """The constant z is outside training; None when it stays drawn (``mc``)."""
        if self.evaluation is Evaluation.mc:
            return None
        if self.evaluation is Evaluation.value:
            assert self.value is not None, f"mask {self.name}: evaluation=value needs a value"
            return self.value
        return self.expectation


class GRUGates(NamedTuple):
    """The GRU's gate values at one step, each (B, H): reset r, update u (``nn.GRU``'s z)
    and candidate n."""

    r: torch.Tensor
    u: torch.Tensor
    n: torch.Tensor


class Rule:
    """An in-step rule on a cell. Subclass it, set the class attributes, override hooks.

    ``name``: the variant's name (``variant=<name>``); ``cells``: the cells it supports;
    ``settings``: a dataclass of its settings (rates ``p_*``), which join the variant's
    schema; ``masks``: its :class:`MaskSpec` declarations in drawing order;
    ``linear_point``: see :class:`LinearPoint`; ``conf`` and ``space``: its variant YAML
    and its tuning space YAML (plug-ins; the built-ins live in ``conf/``).
    """

    name: ClassVar[str] = ""
    cells: ClassVar[tuple[str, ...]] = ("lstm",)
    settings: ClassVar[type | None] = None
    masks: ClassVar[tuple[MaskSpec, ...]] = ()
    linear_point: ClassVar[LinearPoint] = LinearPoint.preactivation
    conf: ClassVar[Path | None] = None
    space: ClassVar[Path | None] = None

    def __init__(self, values: Any = None) -> None:
        self.values = values

    def declared(self) -> tuple[DeclaredMask, ...]:
        """The masks with their rates, in drawing order."""
        return tuple(spec.resolve(self.values) for spec in self.masks)

    def check_cell(self, cell: str) -> None:
        """Refuse, with one line (a ``ValueError``), settings that have no meaning on the
        layer's ``cell`` (one of :attr:`cells`): a mask on the LSTM's memory on a GRU."""

    @property
    def key(self) -> tuple[Any, ...]:
        """What the compiled code depends on: the rule and its settings' values."""
        values = (
            ()
            if self.values is None
            else tuple(getattr(self.values, f.name) for f in fields(self.values))
        )
        return (type(self).__qualname__, values)

    # --- hooks (the plain LSTM unless overridden) ----------------------------------------

    def pre_input(self, x: torch.Tensor, z: Masks) -> torch.Tensor:
        """x (T, B, n) before W x + b; may return (T, 4, B, n), one input per gate."""
        return x

    def pre_weights(self, weight_hh: torch.Tensor, z: Masks) -> torch.Tensor:
        """U (4H, H), once per forward pass."""
        return weight_hh

    def pre_hidden(self, h: torch.Tensor, z: Masks) -> torch.Tensor:
        """h_{t-1} (B, H) before U h; may return (4, B, H), one per gate."""
        return h

    def post(
        self, gates: Gates, h: torch.Tensor, c: torch.Tensor, z: Masks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_t, c_t) from the gates and (h_{t-1}, c_{t-1}): c_t = f ∘ c + i ∘ g,
        h_t = o ∘ tanh(c_t)."""
        c_new = torch.addcmul(gates.f * c, gates.i, gates.g)
        return gates.o * torch.tanh(c_new), c_new

    def post_gru(self, gates: GRUGates, h: torch.Tensor, z: Masks) -> torch.Tensor:
        """h_t from the GRU's gates and h_{t-1}: (1 - u) ∘ n + u ∘ h_{t-1}."""
        return torch.lerp(gates.n, h, gates.u)


class BuiltinRule(Rule):
    """The built-in in-step masks (:class:`InStepDropout`) through the plug-in hooks: Gal's
    z_x, z_h as pre hooks, Semeniuta, Moon and zoneout as the post hook
    :func:`~rnnreg.model.recurrence.builtin_update`, the same function the hand-written
    path runs. Its masks are drawn by
    :func:`~rnnreg.model.regularizers.layer_masks.draw_layer_masks` (today's order)."""

    name = "builtin"
    cells = ("lstm", "gru")

    def __init__(self, dropout: InStepDropout, memory: MemoryForm) -> None:
        super().__init__(dropout)
        self.dropout = dropout
        self.memory = memory

    @property
    def key(self) -> tuple[Any, ...]:
        return ("builtin", self.dropout, self.memory)

    def declared(self) -> tuple[DeclaredMask, ...]:
        return builtin_declared(self.dropout)

    def pre_input(self, x: torch.Tensor, z: Masks) -> torch.Tensor:
        z_x = z.get("input")
        return x if z_x is None else x.unsqueeze(1) * z_x  # (T, 4, B, n)

    def pre_hidden(self, h: torch.Tensor, z: Masks) -> torch.Tensor:
        z_h = z.get("hidden")
        if z_h is None:
            return h
        return h.unsqueeze(0) * z_h if z_h.dim() == 3 else h * z_h

    def post(
        self, gates: Gates, h: torch.Tensor, c: torch.Tensor, z: Masks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_new, c_new, _ = builtin_update(
            gates,
            h,
            c,
            z.get("update"),
            z.get("memory"),
            z.get("zoneout_cell"),
            z.get("zoneout_hidden"),
            self.memory,
        )
        return h_new, c_new

    def post_gru(self, gates: GRUGates, h: torch.Tensor, z: Masks) -> torch.Tensor:
        """Semeniuta's d on the candidate and zoneout's m^h on the GRU:

        h̃_t = (1 - u) ∘ (d ∘ n) + u ∘ h_{t-1},    h_t = m^h ∘ h_{t-1} + (1 - m^h) ∘ h̃_t
        """
        d, m = z.get("update"), z.get("zoneout_hidden")
        h_new = torch.lerp(gates.n if d is None else gates.n * d, h, gates.u)
        return h_new if m is None else torch.lerp(h_new, h, m)


def builtin_declared(d: InStepDropout) -> tuple[DeclaredMask, ...]:
    """The built-in in-step masks of ``d`` as declarations, in drawing order: Gal's z_x
    (untied) and z_h, Semeniuta's z_u, Moon's z_m, zoneout's z^c and z^h, weight-drop's M
    (a ``batch`` z_h is a column mask on U, part of M: draw_layer_masks in
    rnnreg/model/regularizers/layer_masks.py)."""
    found = []
    if d.untied and d.p_input > 0:
        found.append(
            DeclaredMask(
                "input", d.p_input, d.input_granularity, Units.input, per_gate=True, scaled=d.scale
            )
        )
    if d.p_hidden > 0:
        found.append(
            DeclaredMask(
                "hidden", d.p_hidden, d.hidden_granularity, per_gate=d.untied, scaled=d.scale
            )
        )
    if d.p_update > 0:
        found.append(
            DeclaredMask("update", d.p_update, d.update_granularity, scaled=d.update_scale)
        )
    if d.p_memory > 0:
        found.append(DeclaredMask("memory", d.p_memory, d.memory_granularity, scaled=d.scale))
    for name in ("zoneout_cell", "zoneout_hidden"):
        if getattr(d, name) > 0:
            found.append(
                DeclaredMask(name, getattr(d, name), d.zoneout_granularity, scaled=False, keep=True)
            )
    if d.p_weight > 0:
        found.append(
            DeclaredMask("weight_hh", d.p_weight, Granularity.batch, Units.weight_hh, scaled=True)
        )
    return tuple(found)


def draw_declared(
    declared: tuple[DeclaredMask, ...],
    sizes: Mapping[Units, int],
    steps: int,
    batch: int,
    *,
    training: bool,
    mc: MCDropout | None = None,
    device: torch.device,
    dtype: torch.dtype,
    gates: int = 4,
) -> dict[str, Mask]:
    """Every declared mask for one forward pass over (steps, batch), in declared order,
    with the one mask helper; outside training (and without MC) each is its evaluation
    value, (1, 1, m) (None where that is 1). ``sizes`` gives n and H; ``gates`` the cell's
    gate count (4: LSTM, 3: GRU), for per-gate masks and U (gates·H x H)."""
    stochastic = training or mc is not None
    replicas = 1 if mc is None else mc.replicas
    held = None if mc is None else mc.held
    masks: dict[str, Mask] = {}
    for mask in declared:
        if mask.rate == 0.0:
            masks[mask.name] = None
            continue
        if not stochastic and mask.evaluation is not Evaluation.mc:
            value = mask.evaluation_value
            units = sizes[mask.units]
            masks[mask.name] = (
                None
                if value == 1.0
                else torch.full(
                    (1, 1, units) if mask.units is not Units.weight_hh else (1, 1),
                    value,
                    device=device,
                    dtype=dtype,
                )
            )
            continue
        masks[mask.name] = held_or_drawn(
            held,
            mask.name,
            None if mask.units is Units.weight_hh else mask.granularity,
            lambda m=mask: _draw_one(m, sizes, steps, batch, replicas, device, dtype, gates),
        )
    return masks


def _draw_one(
    mask: DeclaredMask,
    sizes: Mapping[Units, int],
    steps: int,
    batch: int,
    replicas: int,
    device: torch.device,
    dtype: torch.dtype,
    gates: int = 4,
) -> torch.Tensor:
    """One draw of ``mask`` from the one mask helper; an activation mask, which the
    compiled loop may take, as a tensor of its own."""
    if mask.units is Units.weight_hh:
        hidden = sizes[Units.hidden]
        return draw_mask(
            (gates * hidden, hidden), mask.p_zero, scale=mask.scaled, device=device, dtype=dtype
        )
    return draw_activation_mask(
        (steps, batch, sizes[mask.units]),
        mask.p_zero,
        mask.granularity,
        gates=gates if mask.per_gate else None,
        replicas=replicas,
        scale=mask.scaled,
        device=device,
        dtype=dtype,
        own_storage=True,
    )
