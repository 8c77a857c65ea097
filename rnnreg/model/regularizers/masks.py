"""The one mask helper: Bernoulli masks with a rate, a granularity and optional scaling.

Every regularizer draws its masks here and nowhere else (docs/variants.md, "Masks"). A mask ``z``
has entries in {0, 1}, an entry is 0 (dropped) with probability ``p``; with inverted
scaling the kept entries are ``1/(1-p)`` so that nothing changes at evaluation time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rnnreg.config.dropout import Granularity, check_rate


def mask_shape(shape: Sequence[int], granularity: Granularity | str) -> tuple[int, ...]:
    """The shape of a mask for activations of ``shape`` = (T, B, m) at ``granularity``."""
    if len(shape) != 3:
        raise ValueError(f"activation masks expect a (T, B, m) shape, got {tuple(shape)}")
    steps, rows, units = shape
    granularity = Granularity(granularity)
    if granularity is Granularity.step:
        return (steps, rows, units)
    if granularity is Granularity.sequence:
        return (1, rows, units)
    return (1, 1, units)


#: Bits of each mask entry's random word (four words per 64-bit draw): keep_from_bits.
WORD_BITS = 16
_WORD_VALUES = 1 << WORD_BITS


def word_threshold(p: float) -> int:
    """The smallest kept word: w >= round(p 2^16) - 2^15 keeps w with probability 1 - p."""
    return round(p * _WORD_VALUES) - _WORD_VALUES // 2


def keep_from_uniform(
    shape: tuple[int, ...], p: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Boolean keep-mask ``U(0,1) >= p`` (the path on accelerators, whose RNG is fast)."""
    return torch.rand(shape, device=device, generator=generator) >= p


def keep_from_bits(
    shape: tuple[int, ...], p: float, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Boolean keep-mask from 16-bit words cut out of 64-bit random integers (the CPU path).

    Four mask entries per random draw: ~2.5x faster than ``torch.rand`` on a CPU for a
    weight-sized mask. An entry is kept when its word w, uniform on [-2^15, 2^15), is
    >= round(p 2^16) - 2^15, so P(drop) = round(p 2^16) / 2^16 (|error| <= 2^-17).
    """
    count = math.prod(shape)
    words = -(-count // (64 // WORD_BITS))
    draws = torch.empty(words, dtype=torch.int64, device=device)
    draws.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform
    return draws.view(torch.int16)[:count].view(shape) >= word_threshold(p)


@dataclass(frozen=True)
class Draw:
    """One mask request of :func:`draw_mask`, as a pool (rnnreg/model/regularizers/pool.py)
    serves it."""

    shape: tuple[int, ...]
    p: float
    scale: bool
    dtype: torch.dtype
    device: torch.device
    own_storage: bool = False

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def draw_mask(
    shape: Sequence[int],
    p: float,
    *,
    scale: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    own_storage: bool = False,
) -> torch.Tensor:
    """A mask ``z`` of ``shape``: P(z = 0) = p, else z = 1, or 1/(1-p) when ``scale``.

    ``own_storage``: a tensor of its own, never a view into a pooled draw
    (rnnreg/model/regularizers/pool.py), for a mask that compiled code takes as input (a
    view would carry its storage offset into the compiled code's guards).
    Never ``bernoulli_``, several times slower on a CPU: see :func:`keep_from_bits`.
    """
    check_rate(p)
    device = torch.device(device) if device is not None else torch.device("cpu")
    sample = keep_from_bits if device.type == "cpu" else keep_from_uniform

    def unpooled() -> torch.Tensor:
        return scaled(sample(tuple(shape), p, device, generator), p, scale, dtype)

    if generator is not None or not _DRAWING:
        return unpooled()
    return _DRAWING[-1].draw(Draw(tuple(shape), p, scale, dtype, device, own_storage), unpooled)


def scaled(keep: torch.Tensor, p: float, scale: bool, dtype: torch.dtype) -> torch.Tensor:
    """The mask from its boolean keep-mask: 1/(1-p) where kept when ``scale``, else 1."""
    if scale and dtype == torch.get_default_dtype():
        return keep * (1.0 / (1.0 - p))  # bool × float: the cast and the scale in one operator
    mask = keep.to(dtype)
    return mask.mul_(1.0 / (1.0 - p)) if scale else mask


#: What serves draw_mask's requests inside rnnreg/model/regularizers/pool.py's contexts (a
#: Recorder or a Pool), innermost last; empty: each mask is drawn on its own.
_DRAWING: list[Any] = []


@contextlib.contextmanager
def drawing_with(server: Any) -> Iterator[None]:
    """Route :func:`draw_mask`'s requests (default generators only) to ``server``."""
    _DRAWING.append(server)
    try:
        yield
    finally:
        _DRAWING.pop()


def draw_activation_mask(
    shape: Sequence[int],
    p: float,
    granularity: Granularity | str,
    *,
    gates: int | None = None,
    replicas: int = 1,
    scale: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    own_storage: bool = False,
) -> torch.Tensor:
    """A mask for activations of ``shape`` = (T, B, m) at ``granularity`` (``own_storage``:
    see :func:`draw_mask`).

    ``gates`` inserts a gate dimension after time, one independent mask per gate:
    (T|1, gates, B|1, m). ``replicas`` = R > 1 says that the batch holds R independent
    copies of the same B/R rows, replica-major (MC-dropout samples): a ``batch`` mask is
    then drawn once per replica and shared by that replica's rows only.
    """
    steps, rows, units = shape
    granularity = Granularity(granularity)
    if rows % replicas:
        raise ValueError(f"a batch of {rows} rows does not split into {replicas} replicas")
    time_dim = steps if granularity is Granularity.step else 1
    row_dim = replicas if granularity is Granularity.batch else rows
    core = (time_dim, row_dim, units) if gates is None else (time_dim, gates, row_dim, units)
    mask = draw_mask(core, p, scale=scale, device=device, dtype=dtype, own_storage=own_storage)
    if granularity is Granularity.batch and replicas > 1:
        per_replica = mask.unsqueeze(-2).expand(*core[:-1], rows // replicas, units)
        mask = per_replica.reshape(*core[:-2], rows, units)
    return mask


def apply_mask(
    x: torch.Tensor,
    p: float,
    granularity: Granularity | str,
    *,
    scale: bool = True,
    replicas: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x ∘ z`` for activations ``x`` of shape (T, B, m), ``z`` drawn at ``granularity``.

    ``mask`` replaces the random draw (tests give explicit masks this way).
    """
    if mask is None:
        if p == 0.0:
            return x
        mask = draw_activation_mask(
            x.shape, p, granularity, replicas=replicas, scale=scale, device=x.device, dtype=x.dtype
        )
    return x * mask


RngState = tuple[torch.Tensor, list[torch.Tensor] | None]


def rng_state() -> RngState:
    """The default generators' states: the CPU's, and every CUDA device's once CUDA is up."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class HeldMasks:
    """Masks drawn once and reused by every later forward pass (one MC-dropout sample).

    Gal's MC evaluation (``run_MC_test`` of ``main_new_dropout_SOTA_v3_fix.lua``) draws
    one set of masks per sample and runs it over the whole test stream: one draw of the
    weights from the approximate posterior. A module holding a ``HeldMasks`` asks it for
    each time-constant mask (granularity ``sequence`` or ``batch``, weight masks) by
    name. The first request draws it from the default generators and keeps their state
    before the draw, not the mask; a later request draws it again from that state and
    puts the generators back, so it gets the same mask and the random stream goes on as
    if it had been held. What a sample keeps is a few generator states (a CPU state is
    5 kB), not its masks (45 MB of weight masks for ``model=awd``): the memory of
    ``eval.mc_mask_draw=stream`` does not grow with the masks' size times K
    (scripts/mc_memory.py). ``step`` masks are never held: a fresh mask per step is
    already one draw over the stream.
    """

    def __init__(self) -> None:
        self._states: dict[str, RngState] = {}
        self._children: dict[Hashable, HeldMasks] = {}

    def get(self, name: str, draw: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """The mask held as ``name``: ``draw()`` from the generators' state of its first
        request, the current state left as it was after that first draw."""
        held = self._states.get(name)
        if held is None:
            self._states[name] = rng_state()
            return draw()
        now = rng_state()
        set_rng_state(held)
        try:
            return draw()
        finally:
            set_rng_state(now)

    def child(self, key: Hashable) -> HeldMasks:
        """The holder of one module (``key``: its name) or of one replica (its index)."""
        return self._children.setdefault(key, HeldMasks())

    def held_bytes(self) -> int:
        """The bytes this holder and its children keep (generator states)."""
        own = sum(
            cpu.numel() + sum(t.numel() for t in cuda or []) for cpu, cuda in self._states.values()
        )
        return own + sum(child.held_bytes() for child in self._children.values())


def held_or_drawn(
    held: HeldMasks | None,
    name: str,
    granularity: Granularity | None,
    draw: Callable[[], torch.Tensor | None],
) -> torch.Tensor | None:
    """``draw()``, or the held mask ``name`` when ``held`` is given and the mask is
    time-constant (``granularity`` is not ``step``; None for weight masks)."""
    if held is None or granularity is Granularity.step:
        return draw()
    return held.get(name, draw)


@dataclass(frozen=True)
class MCDropout:
    """MC-dropout evaluation, an explicit argument of the forward pass: masks stay on
    outside training (Gal & Ghahramani), for ``replicas`` independent copies.

    ``replicas`` = R says that the batch holds R independent copies, replica-major:
    masks drawn once per forward pass (``batch``, word types, weights) are then drawn
    once per copy. ``held`` (a :class:`HeldMasks`) keeps every time-constant mask from
    the first forward pass for the following ones: one draw per sample over the whole
    stream (``eval.mc_mask_draw=stream``); None draws anew at every pass (window).
    ``embedding=False`` turns the word-type mask off (Gal's ``run_MC_test``).
    """

    replicas: int = 1
    held: HeldMasks | None = None
    embedding: bool = True

    def scope(self, key: Hashable) -> MCDropout:
        """The same sample for one module: its own held masks under ``key``."""
        return self if self.held is None else replace(self, held=self.held.child(key))

    def replica(self, index: int) -> MCDropout:
        """Replica ``index`` on its own (a layer that runs each copy separately)."""
        held = None if self.held is None else self.held.child(index)
        return replace(self, replicas=1, held=held)
