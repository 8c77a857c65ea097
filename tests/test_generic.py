"""The generic loop path: autograd reaches every input, eager and compiled, and it equals
the hand-written path for every built-in rule (rnnreg/model/generic.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnnreg.config.dropout import Granularity, InStepDropout, LSTMPath
from rnnreg.model.generic import GenericRecurrence
from rnnreg.model.lstm import LSTMLayer, PathError
from rnnreg.model.recurrence import MemoryForm, Recurrence
from rnnreg.model.rule import BuiltinRule
from tests.test_recurrence import CASES, B, H, T, inputs, masks_for


def _builtin(case: str) -> tuple[BuiltinRule, MemoryForm]:
    memory = MemoryForm(carried="carried" in case, scale_on_output=case.endswith("on_output"))
    return BuiltinRule(InStepDropout(), memory), memory


def _named(masks) -> dict:
    return {name: mask for name, mask in masks._asdict().items()}


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_reaches_every_input_on_the_generic_path(case: str) -> None:
    """Finite differences in float64 against autograd, for gx, h0, c0 and U at once."""
    gen = torch.Generator().manual_seed(CASES.index(case))
    leaves = inputs(case, gen)
    masks = _named(masks_for(case, gen))
    rule, _ = _builtin(case)
    generic = GenericRecurrence(rule)
    assert torch.autograd.gradcheck(lambda *xs: generic(*xs, masks), leaves)


@pytest.mark.parametrize("case", ["gal_untied", "composed"])
def test_the_compiled_generic_path_equals_the_hand_written_one(case: str) -> None:
    """Compiled in blocks (T = 6: one block of 5, one of 1), forward and backward."""
    gen = torch.Generator().manual_seed(11)
    leaves = inputs(case, gen)
    in_step = masks_for(case, gen)
    rule, memory = _builtin(case)
    upstream = [
        torch.randn(s, generator=gen, dtype=torch.float64) for s in [(T, B, H), (B, H), (B, H)]
    ]

    def run(impl, masks):
        outs = impl(*leaves, masks) if masks is not in_step else impl(*leaves, masks, memory)
        loss = sum((y * w).sum() for y, w in zip(outs, upstream, strict=True))
        return outs, torch.autograd.grad(loss, leaves)

    generic = GenericRecurrence(rule, {}, key=("test", case), block=5)
    assert generic.spans(T) == [(0, 5), (5, 6)]
    got, got_grads = run(generic, _named(in_step))
    want, want_grads = run(Recurrence(), in_step)
    for have, expected in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        torch.testing.assert_close(have, expected, rtol=1e-9, atol=1e-11)
    assert generic.mode == "compiled" and generic.compilations >= 2


def test_gradcheck_fails_for_a_detached_input() -> None:
    """The check can fail: a block that cuts h0 off the graph (as the hand-written path's
    inputs are) gives autograd no path to dh0."""
    gen = torch.Generator().manual_seed(5)
    leaves = inputs("gal", gen)
    masks = _named(masks_for("gal", gen))
    rule, _ = _builtin("gal")
    generic = GenericRecurrence(rule)

    def cut(gx, h0, c0, weight):
        return generic(gx, h0.detach() + 0 * h0, c0, weight, masks)

    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(cut, leaves)


LAYER_CASES = {
    "gal": dict(p_hidden=0.3),
    "gal_untied": dict(p_hidden=0.3, p_input=0.4, untied=True),
    "semeniuta": dict(p_update=0.25, update_granularity=Granularity.step),
    "moon": dict(p_memory=0.5),
    "zoneout": dict(zoneout_cell=0.5, zoneout_hidden=0.05),
    "weight_drop_and_gal": dict(p_weight=0.5, p_hidden=0.2),
}


@pytest.mark.parametrize("name", LAYER_CASES)
def test_a_layer_on_the_generic_path_equals_the_loop_path(name: str) -> None:
    """Same masks (same seed), same outputs and parameter gradients: the built-in rules
    run both ways."""
    dropout = InStepDropout(**LAYER_CASES[name])
    torch.manual_seed(0)
    loop = LSTMLayer(7, 5, dropout, LSTMPath.loop).double()
    generic = LSTMLayer(7, 5, dropout, LSTMPath.generic).double()
    generic.load_state_dict(loop.state_dict())
    x = torch.randn(6, 3, 7, dtype=torch.float64)
    state = (torch.randn(1, 3, 5, dtype=torch.float64), torch.randn(1, 3, 5, dtype=torch.float64))
    results = []
    for layer in (loop, generic):
        torch.manual_seed(1)
        out, (h, c) = layer(x, state)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append((out, h, c, *(p.grad for p in layer.parameters())))
    for have, want in zip(*results, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12)
    assert generic.path is LSTMPath.generic and generic.loop_mode == "eager"


def test_a_plug_in_rule_refuses_the_hand_written_paths() -> None:
    from rnnreg.model.rule import Rule

    class Plain(Rule):
        name = "plain"

    with pytest.raises(PathError, match="only the generic path"):
        LSTMLayer(3, 3, InStepDropout(), LSTMPath.loop, rule=Plain())
    with pytest.raises(PathError, match="not with another in-step rule"):
        LSTMLayer(3, 3, InStepDropout(p_hidden=0.2), LSTMPath.auto, rule=Plain())
    assert (
        LSTMLayer(3, 3, dataclasses.replace(InStepDropout(), p_weight=0.5), rule=Plain()).path
        is LSTMPath.generic
    )
