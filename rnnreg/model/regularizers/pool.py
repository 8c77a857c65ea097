"""Every mask of a training forward pass drawn in one random draw (docs/performance.md,
"Operators per step").

One by one, each mask costs its own random draw, comparison and scale; a Gal model draws
six per window. A :class:`MaskPlan` is the list of the masks a forward pass of one window
shape draws (shape, rate, scaling, in drawing order), recorded once
(:func:`recording`); :func:`pooled` then draws them together:

    w = one random draw for every mask,  keep = w >= θ  (θ: each entry's own mask's),
    v = keep · s                          (s: each entry's own mask's 1/(1-p), or 1)
    z_k = v[span_k]                       (a view), or keep[span_k] · s_k (its own tensor)

three operators for the masks applied outside compiled code, and one more for each mask
that compiled code takes as input (``own_storage``: the in-step masks): a view into the
shared buffer would carry its storage offset into the compiled loop's guards. On a CPU
the words are the 64-bit integers the masks drew one by one (``keep_from_bits`` in
rnnreg/model/regularizers/masks.py), in the same order, each mask starting at a fresh
integer: the CPU generator draws them in sequence, so the masks are the same to the bit
(tests/test_masks.py). On a GPU they come from one ``torch.rand``: the same distribution,
another stream, the same one on every run and resume (the plan is recorded with the
generators' state put back, so a resumed run pools its first window as the uninterrupted
run did).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from rnnreg.model.regularizers import masks as mask_helper
from rnnreg.model.regularizers.masks import Draw


class Recorder:
    """Draws as :func:`draw_mask` does, noting each request."""

    def __init__(self) -> None:
        self.draws: list[Draw] = []

    def draw(self, request: Draw, unpooled: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.draws.append(request)
        return unpooled()


class MaskPlan:
    """The masks of one forward pass and where each lies in the one draw: a span of
    16-bit words (CPU, a multiple of 4: each mask starts at a fresh 64-bit integer) or of
    uniforms (GPU), the threshold of each entry (one number when the rates agree) and,
    when more than one mask of one dtype is applied outside compiled code, the scale of
    each entry (:attr:`scales`)."""

    def __init__(self, draws: list[Draw]) -> None:
        self.draws = tuple(draws)
        self.device = draws[0].device if draws else torch.device("cpu")
        self.bits = self.device.type == "cpu"
        unit = 64 // mask_helper.WORD_BITS if self.bits else 1
        self.spans, start = [], 0
        for draw in self.draws:
            self.spans.append((start, draw.count))
            start += -(-draw.count // unit) * unit
        self.entries = start
        ends = [s for s, _ in self.spans[1:]] + [self.entries] * bool(self.spans)
        sizes = tuple(end - s for (s, _), end in zip(self.spans, ends, strict=True))
        levels = tuple(self._threshold(d.p) for d in self.draws)
        self.threshold: float | torch.Tensor = levels[0] if len(set(levels)) == 1 else 0.0
        if len(set(levels)) > 1:
            kind = torch.int16 if self.bits else torch.float32
            self.threshold = _per_entry(levels, sizes, kind, self.device)
        viewed = [d for d in self.draws if not d.own_storage]
        #: Each entry's 1/(1-p) (or 1), for the masks that may be views into one scaled
        #: buffer: more than one, of one dtype; else None (each mask scaled on its own).
        self.scales: torch.Tensor | None = None
        if len(viewed) > 1 and len({d.dtype for d in viewed}) == 1:
            factors = tuple(0.0 if d.own_storage else _factor(d) for d in self.draws)
            self.scales = _per_entry(factors, sizes, viewed[0].dtype, self.device)

    @property
    def poolable(self) -> bool:
        """One device, and more than one mask (a single mask gains nothing)."""
        return len(self.draws) > 1 and len({d.device for d in self.draws}) == 1

    def _threshold(self, p: float) -> float:
        return mask_helper.word_threshold(p) if self.bits else p

    def draw_all(self) -> list[torch.Tensor]:
        """Every mask of the plan, from one draw of the default generators."""
        if self.bits:
            words = torch.empty(self.entries // 4, dtype=torch.int64, device=self.device)
            words.random_(-(1 << 63), None)  # all 64 bits uniform, as keep_from_bits
            keep = words.view(torch.int16) >= self.threshold
        else:
            keep = torch.rand(self.entries, device=self.device) >= self.threshold
        values = None if self.scales is None else keep * self.scales
        masks = []
        for (start, _), d in zip(self.spans, self.draws, strict=True):
            if values is not None and not d.own_storage:
                masks.append(_part(values, start, d.shape))
            else:
                masks.append(mask_helper.scaled(_part(keep, start, d.shape), d.p, d.scale, d.dtype))
        return masks


def _factor(draw: Draw) -> float:
    """A kept entry's value: 1/(1-p) when scaled, else 1."""
    return 1.0 / (1.0 - draw.p) if draw.scale else 1.0


def _part(buffer: torch.Tensor, start: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Entries ``start ..`` of a flat ``buffer`` as a contiguous view of ``shape``: one
    operator (``as_strided``), where a slice and a view are two."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return buffer.as_strided(shape, tuple(reversed(strides)), start)


#: Per-entry thresholds and scales by content: plans of different window shapes whose
#: masks do not depend on the window's length (AWD-LSTM's variable BPTT: weight and
#: sequence masks) share one tensor instead of holding a weight-sized copy each.
_PER_ENTRY: dict[tuple[object, ...], torch.Tensor] = {}


def _per_entry(
    levels: tuple[float, ...], sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Each mask's level repeated over its span (words or uniforms), made once. A float
    level is rounded as a scalar operator rounds it (through fp32 for a narrower dtype)."""
    key = (levels, sizes, dtype, device)
    if key not in _PER_ENTRY:
        wide = torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype
        per_mask = torch.tensor(levels, dtype=wide, device=device).to(dtype)
        _PER_ENTRY[key] = per_mask.repeat_interleave(torch.tensor(sizes, device=device))
    return _PER_ENTRY[key]


class Pool:
    """Hands each request of a forward pass its mask from the plan's one draw."""

    def __init__(self, plan: MaskPlan) -> None:
        self.plan = plan
        self.masks = plan.draw_all()
        self.next = 0

    def draw(self, request: Draw, unpooled: Callable[[], torch.Tensor]) -> torch.Tensor:
        index = self.next
        if index >= len(self.masks) or self.plan.draws[index] != request:
            raise RuntimeError(
                f"a forward pass asked for mask {index} as {request}, which its recorded "
                "plan does not hold: the masks a window draws must not depend on its values "
                "(rnnreg/model/regularizers/pool.py)"
            )
        self.next += 1
        return self.masks[index]


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Note every mask drawn inside (with the default generators) in a :class:`Recorder`."""
    recorder = Recorder()
    with mask_helper.drawing_with(recorder):
        yield recorder


@contextlib.contextmanager
def pooled(plan: MaskPlan) -> Iterator[Pool]:
    """Serve every mask drawn inside from the plan's one draw; all of them must be used."""
    pool = Pool(plan)
    with mask_helper.drawing_with(pool):
        yield pool
    if pool.next != len(pool.masks):
        raise RuntimeError(
            f"a forward pass drew {pool.next} of the {len(pool.masks)} masks of its plan "
            "(rnnreg/model/regularizers/pool.py)"
        )
