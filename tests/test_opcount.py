"""Operators per step from profiler events (rnnreg/core/opcount.py)."""

from __future__ import annotations

import torch

from rnnreg.core.opcount import count_operators


def test_views_and_no_op_casts_are_dispatches_but_not_compute() -> None:
    x, y = torch.randn(4, 5), torch.randn(4, 5)

    def step() -> None:
        z = (x + y).view(20)  # add: compute; view: a dispatch only
        z.to(torch.float32)  # a no-op cast: a dispatch only
        z.to(torch.float64)  # a copy: compute (its _to_copy is not counted again)
        torch.where(z > 0, z, 0.0)  # gt, where: compute

    counts = count_operators(step, steps=2)
    assert counts.per_step(counts.dispatches) == 6
    assert counts.per_step(counts.compute) == 4
    assert counts.names == {"aten::add": 2, "aten::to": 2, "aten::gt": 2, "aten::where": 2}


def test_a_reshape_is_compute_only_when_it_copies() -> None:
    x = torch.randn(4, 5, 6)

    def step() -> None:
        x.reshape(20, 6)  # a view: a dispatch only
        x.transpose(0, 1).reshape(20, 6)  # transpose: a view; reshape: a copy (clone)
        x.transpose(0, 1).flatten(0, 1)  # the same copy through flatten

    counts = count_operators(step, steps=2)
    assert counts.per_step(counts.dispatches) == 5
    assert counts.per_step(counts.compute) == 2
    assert counts.names == {"aten::reshape": 2, "aten::flatten": 2}


def test_a_compiled_graph_call_is_counted_apart() -> None:
    compiled = torch.compile(lambda a: (a * 2).sin() + 1)
    a = torch.randn(8)
    compiled(a)  # compile outside the profile
    counts = count_operators(lambda: compiled(a), steps=3)
    assert counts.per_step(counts.compiled_calls) >= 1
    assert "aten::sin" not in counts.names  # fused inside the graph's kernel
