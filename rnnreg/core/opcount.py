"""What a training step costs in operators, counted from ``torch.profiler`` events
(docs/performance.md, "Operators per step"):

* **host dispatches**: the aten operators that no other aten operator called. Each costs
  the host a few microseconds whatever it does; in a launch-bound GPU step the GPU waits
  on them, so views and no-op casts count here too.
* **compute operators**: those dispatches less the view, alias and metadata operators
  (:data:`METADATA`), the ``to``/``contiguous``/``reshape`` calls that copy nothing, and the
  compiled-graph calls, counted apart: roughly what a GPU launches (an ``aten::lstm``
  launches several kernels, a compiled graph its own: on a GPU count kernels instead).
* **CUDA kernels**: the kernel events on a CUDA device, when the profiler saw any.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

#: Operators that move no data: views, aliases, shape metadata, allocation.
METADATA = frozenset(
    "aten::" + name
    for name in (
        "detach detach_ view _reshape_alias t transpose slice select unsqueeze squeeze "
        "expand expand_as as_strided alias permute empty empty_like empty_strided new_empty "
        "new_empty_strided unbind split "
        "chunk narrow _unsafe_view lift_fresh resolve_conj resolve_neg numpy_T view_as "
        "set_ is_nonzero result_type promote_types"
    ).split()
)

#: Operators that copy only when they must: compute when they called a copy (a ``reshape``
#: or ``flatten`` of a tensor no view can give clones it, a kernel on a GPU).
MAYBE_COPY = {
    "aten::to": "aten::_to_copy",
    "aten::contiguous": "aten::clone",
    "aten::reshape": "aten::clone",
    "aten::flatten": "aten::clone",
}

#: Profiler events that stand for a compiled graph's call.
COMPILED = ("CompiledFunction", "Torch-Compiled Region")


@dataclass
class OperatorCounts:
    """Counts over ``steps`` profiled steps; ``per_step`` divides them."""

    steps: int
    dispatches: int = 0
    compute: int = 0
    compiled_calls: int = 0
    cuda_kernels: int = 0
    names: Counter = field(default_factory=Counter)

    def per_step(self, value: int) -> float:
        return value / max(self.steps, 1)


def _aten_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _copies(event: Any) -> bool:
    """Whether a ``to``/``contiguous``/``reshape`` call copied (called its copy operator)."""
    wanted = MAYBE_COPY[event.name]
    return any(child.name == wanted for child in event.cpu_children)


def count_events(events: list[Any], steps: int) -> OperatorCounts:
    """:class:`OperatorCounts` of a profile's ``events()`` over ``steps`` steps."""
    counts = OperatorCounts(steps)
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            counts.cuda_kernels += 1
            continue
        if any(event.name.startswith(name) for name in COMPILED) and not _aten_parent(event):
            counts.compiled_calls += 1
            continue
        if not event.name.startswith("aten::") or _aten_parent(event):
            continue
        counts.dispatches += 1
        if event.name in METADATA or (event.name in MAYBE_COPY and not _copies(event)):
            continue
        counts.compute += 1
        counts.names[event.name] += 1
    return counts


def count_operators(step: Callable[[], None], steps: int = 3) -> OperatorCounts:
    """Profile ``steps`` calls of ``step`` and count their operators (CUDA kernels too
    when CUDA is up)."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if ProfilerActivity.CUDA in activities:
            torch.cuda.synchronize()
    return count_events(list(prof.events()), steps)
