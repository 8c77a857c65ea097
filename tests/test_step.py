"""The training step in few operators (rnnreg/training/step.py): the clip as fused SGD's
divisor, the finite test on the device, the loss seeded instead of multiplied, and the
sums read from the host."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rnnreg.core.opcount import count_operators
from rnnreg.training.loss import window_loss
from rnnreg.training.optim import FiniteSGD, clip_divisor, gradient_norm
from rnnreg.training.state import NLL_LIMIT, StepTotals, finite_step
from rnnreg.training.step import not_finite
from rnnreg.training.trainer import Trainer


def _weights(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 6), (3,)]
    weights = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for w in weights:
        w.grad = 3.0 * torch.randn(w.shape, generator=gen)
    return weights


@pytest.mark.parametrize("max_norm", [0.5, 100.0, math.inf])
def test_the_clipped_step_is_clip_grad_norm_then_torch_sgd_within_a_rounding(
    max_norm: float,
) -> None:
    """Ours: g / max(1, (‖g‖ + 1e-6)/c) inside fused SGD. Torch's: g · min(1, c/(‖g‖ +
    1e-6)) in place, then SGD. The divisor and the factor round differently: the updates
    agree within 4 float32 roundings of the update (rtol 5e-7), the norms exactly."""
    ours, theirs = _weights(0), _weights(0)
    before = [w.detach().clone() for w in ours]
    norm = gradient_norm(ours)
    FiniteSGD(ours, lr=0.7, weight_decay=1e-2).finite_step(
        found_inf=torch.zeros(()), grad_divisor=clip_divisor(norm, max_norm)
    )
    their_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)
    torch.optim.SGD(theirs, lr=0.7, weight_decay=1e-2).step()
    torch.testing.assert_close(norm, their_norm, rtol=0, atol=0)
    for w, v, b in zip(ours, theirs, before, strict=True):
        torch.testing.assert_close(w.detach() - b, v.detach() - b, rtol=5e-7, atol=1e-7)
    divisor = clip_divisor(norm, max_norm)
    assert (divisor is not None and float(divisor) > 1.0) == (max_norm < float(norm))


def test_an_unclipped_step_divides_by_exactly_one() -> None:
    norm = torch.tensor(2.0)
    assert float(clip_divisor(norm, 5.0)) == 1.0
    assert float(clip_divisor(norm, 2.0)) == pytest.approx((2.0 + 1e-6) / 2.0, rel=1e-7)
    assert clip_divisor(norm, math.inf) is None


def test_the_device_test_and_the_host_read_agree_on_what_is_finite() -> None:
    """found_inf (float, for fused SGD) is 1.0 exactly where StepTotals counts a bad step."""
    limit = torch.tensor(NLL_LIMIT)
    above = torch.nextafter(limit, torch.tensor(math.inf))
    below = torch.nextafter(limit, torch.tensor(0.0))
    for nll in (
        below,
        limit,
        above,
        torch.tensor(5.0),
        torch.tensor(math.inf),
        torch.tensor(math.nan),
        torch.tensor(-math.inf),
    ):
        for norm in (torch.tensor(1.0), torch.tensor(math.inf), torch.tensor(math.nan)):
            found = not_finite(nll, norm)
            assert found.dtype == torch.float32 and float(found) in (0.0, 1.0)
            assert (float(found) == 0.0) == finite_step(float(nll), float(norm)), (nll, norm)
    assert finite_step(NLL_LIMIT, 1.0) and math.isfinite(math.exp(NLL_LIMIT))


def test_the_totals_sum_on_the_host_and_name_the_first_bad_step() -> None:
    totals = StepTotals(torch.device("cpu"))
    totals.HELD = 3  # fold early, as a long log interval does
    values = [(2.0, 1.0, 10), (3.0, 2.0, 20), (math.nan, 5.0, 10), (800.0, 1.0, 10), (1.0, 1.0, 5)]
    for step, (nll, norm, tokens) in enumerate(values, start=7):
        totals.add(torch.tensor(nll), torch.tensor(norm), step, tokens)
    assert totals.held and len(totals.step_tokens) == 2  # three were folded
    nll_sum, norm_sum, bad, steps, tokens = totals.read()
    assert bad == 9 and steps == 5 and tokens == 55 and math.isnan(nll_sum)
    assert norm_sum == 10.0
    totals.add(torch.tensor(2.0), torch.tensor(1.0), 12, 10)
    assert totals.read()[:3] == (20.0, 1.0, None)


@pytest.mark.parametrize("variant", ["zaremba", "awd"])
def test_the_seeded_backward_is_the_multiplied_loss_backward(
    make_config, tmp_path: Path, variant: str
) -> None:
    """scale · total + AR + TAR, backpropagated as one tensor, against the seeded roots."""
    run = make_config(f"variant={variant}", "trainer.variable_bptt=false")
    trainer = Trainer(run, tmp_path / "run")
    model, data = trainer.model, trainer.train_data
    inputs, targets = data[:8], data[1:9]
    grads = []
    for seeded in (False, True):
        torch.manual_seed(3)
        model.zero_grad(set_to_none=True)
        w = window_loss(model, inputs, targets, model.init_state(4), run.variant, True)
        assert w.scale == 8.0 and (len(w.regularizers) == 2) == (variant == "awd")
        w.backward() if seeded else w.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)


def test_a_none_step_costs_few_operators_and_no_where(make_config, tmp_path: Path) -> None:
    """The trainer's own step for variant=none (fused LSTM): the issue-41 budget of 25
    compute operators, no torch.where, no read back to the host."""
    run = make_config("variant=none", "trainer.variable_bptt=false")
    trainer = Trainer(run, tmp_path / "run")
    trainer.model.train()
    trainer.state = trainer.model.init_state(run.trainer.batch_size)
    data = trainer.train_data
    window = (data[:8], data[1:9])
    trainer._train_step(*window)  # warm: the first step makes the optimizer's state
    counts = count_operators(lambda: trainer._train_step(*window), steps=2)
    assert counts.per_step(counts.compute) <= 25, counts.names
    assert "aten::where" not in counts.names and "aten::item" not in counts.names
    assert "aten::_foreach_mul_" not in counts.names  # the clip is fused SGD's divisor
