"""The hand-written backward through time equals autograd through the step equations."""

from __future__ import annotations

import pytest
import torch

from rnnreg.model.recurrence import (
    InStepMasks,
    MemoryForm,
    Recurrence,
    backward_through_time,
    forward_saving,
    recurrence,
)

T, B, H = 6, 3, 5


def bernoulli(shape: tuple[int, ...], keep: float, scale: bool, gen: torch.Generator):
    mask = (torch.rand(shape, generator=gen, dtype=torch.float64) < keep).double()
    return mask / keep if scale else mask


def masks_for(case: str, gen: torch.Generator) -> InStepMasks:
    """Masks of every shape the layer passes: per step, per sequence, shared by the batch."""
    masks: dict[str, torch.Tensor | None] = {}
    if case in ("gal", "composed"):
        masks["hidden"] = bernoulli((1, B, H), 0.7, True, gen)
    if case == "gal_untied":
        masks["hidden"] = bernoulli((1, 4, B, H), 0.7, True, gen)
    if case in ("gal_untied_step",):
        masks["hidden"] = bernoulli((T, 4, B, H), 0.7, True, gen)
    if case in ("semeniuta", "composed"):
        masks["update"] = bernoulli((T, B, H), 0.75, True, gen)
    if case.startswith("moon") or case == "composed":
        masks["memory"] = bernoulli((1, B, H), 0.6, True, gen)
    if case in ("zoneout", "composed"):
        masks["zoneout_cell"] = bernoulli((T, B, H), 0.25, False, gen)
        masks["zoneout_hidden"] = bernoulli((T, 1, H), 0.5, False, gen)
    return InStepMasks(**masks)


CASES = [
    "none",
    "gal",
    "gal_untied",
    "gal_untied_step",
    "semeniuta",
    "moon",
    "moon_carried",
    "moon_on_output",
    "moon_carried_on_output",
    "zoneout",
    "composed",
]


def inputs(case: str, gen: torch.Generator, device: torch.device | str = "cpu"):
    untied = case.startswith("gal_untied")
    gx_shape = (T, 4, B, H) if untied else (T, B, 4 * H)
    gx = torch.randn(gx_shape, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(B, H, generator=gen, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    weight = 0.4 * torch.randn(4 * H, H, generator=gen, dtype=torch.float64)
    return tuple(t.to(device).requires_grad_() for t in (gx, h0, c0, weight))


def on(device, masks: InStepMasks) -> InStepMasks:
    return InStepMasks(*(None if m is None else m.to(device) for m in masks))


@pytest.mark.parametrize("case", CASES)
def test_hand_written_backward_equals_autograd(case: str, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(CASES.index(case))
    leaves = inputs(case, gen, device)
    masks = on(device, masks_for(case, gen))
    carried = MemoryForm(carried="carried" in case, scale_on_output=case.endswith("on_output"))
    upstream = [
        torch.randn(s, generator=gen, dtype=torch.float64).to(device)
        for s in [(T, B, H), (B, H), (B, H)]
    ]

    expected = recurrence(*leaves, masks, carried)
    expected_grads = torch.autograd.grad(
        sum((y * w).sum() for y, w in zip(expected, upstream, strict=True)), leaves
    )
    got = Recurrence()(*leaves, masks, carried)
    got_grads = torch.autograd.grad(
        sum((y * w).sum() for y, w in zip(got, upstream, strict=True)), leaves
    )
    for name, want, have in zip(("outputs", "h", "c"), expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12, msg=name)
    for name, want, have in zip(("gx", "h0", "c0", "U"), expected_grads, got_grads, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12, msg=f"d{name}")


@pytest.mark.parametrize("case", ["none", "gal", "gal_untied", "composed"])
def test_the_biases_added_at_each_step_have_their_gradients(case: str) -> None:
    """With b_ih and b_hh given, gx is W x alone and each step adds b_ih + b_hh: the
    outputs equal the bias folded into gx, and d b_ih = d b_hh = Σ δ (against autograd)."""
    gen = torch.Generator().manual_seed(CASES.index(case))
    leaves = inputs(case, gen)
    masks = masks_for(case, gen)
    biases = [torch.randn(4 * H, generator=gen, dtype=torch.float64).requires_grad_() for _ in "ih"]
    upstream = [
        torch.randn(s, generator=gen, dtype=torch.float64) for s in [(T, B, H), (B, H), (B, H)]
    ]
    total = biases[0] + biases[1]
    folded = total.view(4, 1, H) if case == "gal_untied" else total
    expected = recurrence(leaves[0] + folded, *leaves[1:], masks, MemoryForm())
    want = torch.autograd.grad(
        sum((y * w).sum() for y, w in zip(expected, upstream, strict=True)), [*leaves, *biases]
    )
    got = Recurrence()(*leaves, masks, MemoryForm(), *biases)
    have = torch.autograd.grad(
        sum((y * w).sum() for y, w in zip(got, upstream, strict=True)), [*leaves, *biases]
    )
    for name, value, reference in zip(("outputs", "h", "c"), got, expected, strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12, msg=name)
    names = ("gx", "h0", "c0", "U", "b_ih", "b_hh")
    for name, value, reference in zip(names, have, want, strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12, msg=f"d{name}")


def test_gradcheck_of_the_composed_step() -> None:
    """Finite differences, independently of the autograd reference."""
    gen = torch.Generator().manual_seed(7)
    leaves = inputs("composed", gen)
    masks = masks_for("composed", gen)
    impl = Recurrence()
    assert torch.autograd.gradcheck(lambda *xs: impl(*xs, masks, MemoryForm()), leaves)


def test_a_wrong_derivative_is_caught() -> None:
    """The comparison above can fail: drop δ_f's dependence on c_{t-1} and it must."""
    gen = torch.Generator().manual_seed(3)
    leaves = inputs("none", gen)
    masks = masks_for("none", gen)
    saved = forward_saving(*(x.detach() for x in leaves), masks, False)
    outputs, h, c, gates, c_prev, tau, hz = saved
    ones = torch.ones_like(outputs)
    zeros = torch.zeros_like(h)
    args = (ones, zeros, zeros, gates)
    right = backward_through_time(*args, c_prev, tau, hz, leaves[3].detach(), masks, False)
    wrong = backward_through_time(
        *args, torch.ones_like(c_prev), tau, hz, leaves[3].detach(), masks, False
    )
    assert not torch.allclose(right[0], wrong[0])
    expected = recurrence(*leaves, masks, False)[0]
    reference = torch.autograd.grad(expected.sum(), leaves[0])[0]
    torch.testing.assert_close(right[0], reference)
