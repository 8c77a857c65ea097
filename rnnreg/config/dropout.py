"""What a variant drops, written once: the settings shared by the schema and the layer.

Torch-free, so that the configuration schema (:mod:`rnnreg.config.schema`) can import it
without importing torch. :class:`LayerDropout` holds every setting that acts inside an
LSTM layer; the variant schema (``config.VariantConfig``) extends it with the masks
outside the layers, and :class:`InStepDropout` extends it with the three settings that
depend on the layer's position (``InStepDropout.for_layer``). A new in-step regularizer
is one field here (see docs/variants.md, "Adding a regularizer").
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import FrozenInstanceError, dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from rnnreg import RnnregError


class Granularity(str, Enum):
    """How often a fresh mask is drawn, for activations shaped (T, B, m).

    ``step``: every time step and batch row, mask shape (T, B, m);
    ``sequence``: every batch row, shared by the steps of a BPTT window, (1, B, m);
    ``batch``: once per forward pass, shared by every row and step, (1, 1, m).
    """

    step = "step"
    sequence = "sequence"
    batch = "batch"


class LSTMPath(str, Enum):
    """How an LSTM layer runs: the fused library kernel; a loop with in-step masks and the
    hand-written backward (``loop``); or the same loop over a rule's hooks, differentiated
    by autograd (``generic``: any rule, the only path of a plug-in rule)."""

    auto = "auto"
    fused = "fused"
    loop = "loop"
    generic = "generic"


class Cell(str, Enum):
    """The recurrent cell of every layer: ``lstm`` (``nn.LSTM``'s i, f, g, o) or ``gru``
    (``nn.GRU``'s r, z, n; rnnreg/model/gru.py)."""

    lstm = "lstm"
    gru = "gru"


class MemoryScale(str, Enum):
    """Where Moon's inverted-dropout scale 1/(1-p) acts (docs/variants.md, "Moon's scale").

    ``in_memory``: the scaled mask z multiplies the memory, h_t = o_t ∘ tanh(c_t ∘ z) (and
    the carried c_t with ``memory_carried``): a kept unit sees tanh(c/(1-p)) in training
    and tanh(c) at evaluation. ``on_output``: the memory sees the 0/1 mask b and the scale
    goes to the output, h_t = o_t ∘ tanh(c_t ∘ b) / (1-p) = o_t ∘ tanh(c_t) ∘ z: the
    paper's 0/1 formula, and evaluation (z = 1) is its expectation.
    """

    in_memory = "in_memory"
    on_output = "on_output"


class GateMasks(str, Enum):
    """Gal's z_x, z_h: one mask shared by the four gates, or one per gate."""

    tied = "tied"
    untied = "untied"


def is_rate(name: str) -> bool:
    """Whether a setting is a probability: ``p_*`` and the zoneout keep probabilities."""
    return name.startswith("p_") or name in ("zoneout_cell", "zoneout_hidden")


class RateError(RnnregError, ValueError):
    """A drop rate outside [0, 1)."""


def check_rate(value: float, what: str = "a drop probability") -> None:
    """The one range check of a rate: p ∈ [0, 1) (p = 1 drops everything, 1/(1-p) is
    undefined), for the schema and for the regularizers built without it."""
    if not 0.0 <= value < 1.0:
        raise RateError(
            f"{what}={value} is not a probability in [0, 1); "
            "set it to a value such as 0.5 (0 disables it)"
        )


def check_rates(owner: str, settings: Any) -> None:
    """Every rate of the dataclass ``settings`` lies in [0, 1) (:func:`check_rate`)."""
    for f in fields(settings):
        if is_rate(f.name):
            check_rate(getattr(settings, f.name), f"{owner}.{f.name}")


@functools.cache
def _enum_fields(cls: type) -> dict[str, type[Enum]]:
    """The fields of the dataclass ``cls`` typed by an Enum (or an optional one)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in fields(cls):
        hint = hints.get(f.name)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for kind in typing.get_args(hint) if union else (hint,):
            if isinstance(kind, type) and issubclass(kind, Enum):
                found[f.name] = kind
    return found


def coerce_enums(settings: Any, owner: str) -> None:
    """Turn every Enum field of the dataclass ``settings`` given as a string, by name or
    by value (``"on_output"``, ``"reduce-overhead"``), into its member; refuse any other
    value with one line listing the choices. A settings object built in Python is then
    the same as one composed by Hydra, whose enums arrive as members."""
    for name, kind in _enum_fields(type(settings)).items():
        value = getattr(settings, name)
        if value is None or isinstance(value, kind):
            continue
        by_value = {str(member.value): member for member in kind}
        member = kind.__members__.get(value) if isinstance(value, str) else None
        member = member or (by_value.get(value) if isinstance(value, str) else None)
        if member is None:
            raise RnnregError(
                f"{owner}.{name}={value!r} is not a {kind.__name__}; choose one of: "
                f"{', '.join(by_value)}"
            )
        object.__setattr__(settings, name, member)


@dataclass
class LayerDropout:
    """The masks an LSTM layer applies itself (docs/variants.md; equations in
    :mod:`rnnreg.model.recurrence`):

    - ``p_hidden``: Gal's z_h on h_{t-1} (``hidden_granularity``; ``batch`` becomes a
      column mask on U, which the fused kernel can run);
    - ``p_memory``: Moon's mask on the memory, h_t = o_t ∘ tanh(c_t ∘ z)
      (``memory_carried``: c_t = z ∘ (f_t ∘ c_{t-1} + i_t ∘ g_t) as well;
      ``memory_scale``: where its 1/(1-p) acts, :class:`MemoryScale`);
    - ``p_update``: Semeniuta's mask on the update, c_t = f_t ∘ c_{t-1} + z ∘ i_t ∘ g_t;
    - ``zoneout_cell``, ``zoneout_hidden``: probabilities of keeping the previous c or h;
    - ``p_weight``: DropConnect on every hidden-to-hidden matrix U (weight-drop).
    """

    #: How a bad rate is named in the error (``variant.p_hidden=...``).
    owner: ClassVar[str] = "variant"

    p_hidden: float = 0.0
    hidden_granularity: Granularity = Granularity.sequence
    p_memory: float = 0.0
    memory_granularity: Granularity = Granularity.sequence
    memory_carried: bool = False
    #: [assumed] on_output: evaluation is then the training expectation (conf/variant/moon.yaml).
    memory_scale: MemoryScale = MemoryScale.on_output
    p_update: float = 0.0
    update_granularity: Granularity = Granularity.step
    #: Semeniuta: scale the kept updates by 1/(1-p) in training (else by 1-p at evaluation).
    update_scale: bool = True
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    zoneout_granularity: Granularity = Granularity.step
    p_weight: float = 0.0
    #: Inverted scaling (1/(1-p) in training) of every mask but zoneout's and the update's.
    scale: bool = True

    def __post_init__(self) -> None:
        coerce_enums(self, self.owner)
        check_rates(self.owner, self)


@dataclass(unsafe_hash=True)
class InStepDropout(LayerDropout):
    """What one LSTM layer drops itself: :class:`LayerDropout` and its input masks.

    A value: it is hashed as part of the key of the layer's compiled loop
    (:mod:`rnnreg.model.recurrence`), so it cannot change after construction (assigning
    a field raises ``dataclasses.FrozenInstanceError``; ``dataclasses.replace`` makes a
    changed copy). Not ``frozen=True``: a frozen dataclass cannot extend the schema's
    mutable :class:`LayerDropout`.
    """

    owner: ClassVar[str] = "layer"

    #: Per-gate input masks z_x (Gal, untied); tied input masks are applied outside.
    p_input: float = 0.0
    input_granularity: Granularity = Granularity.sequence
    #: One mask per gate (4 for x, 4 for h) instead of one shared by the gates.
    untied: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise FrozenInstanceError(f"InStepDropout is a value; cannot assign {name!r}")
        object.__setattr__(self, name, value)

    @classmethod
    def for_layer(
        cls, variant: LayerDropout, *, p_input: float, granularity: Granularity, untied: bool
    ) -> InStepDropout:
        """The layer's settings: every :class:`LayerDropout` field of ``variant``, and its
        input masks (inside the layer only when the gate masks are untied)."""
        shared = {f.name: getattr(variant, f.name) for f in fields(LayerDropout)}
        return cls(
            **shared,
            p_input=p_input if untied else 0.0,
            input_granularity=granularity,
            untied=untied,
        )

    @property
    def hidden_on_weight(self) -> bool:
        """A ``batch`` z_h is shared by every row and step: it is a column mask on U."""
        return self.p_hidden > 0 and self.hidden_granularity is Granularity.batch

    @property
    def weight_masked(self) -> bool:
        """Whether a mask acts on U (weight-drop, or a ``batch`` z_h as dropped columns)."""
        return self.p_weight > 0 or self.hidden_on_weight

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
