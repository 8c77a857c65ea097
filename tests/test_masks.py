"""The mask helper and activation dropout: values, rates, granularity, eval()."""

from __future__ import annotations

import math

import pytest
import torch

from rnnreg.model.regularizers import (
    ActivationDropout,
    Granularity,
    apply_mask,
    draw_mask,
    mask_shape,
)
from rnnreg.model.regularizers.masks import keep_from_bits, keep_from_uniform


@pytest.mark.parametrize("p", [0.2, 0.5, 0.65])
def test_mask_values_and_drop_rate(p: float) -> None:
    torch.manual_seed(0)
    n = 200_000
    mask = draw_mask((n,), p)
    kept = 1.0 / (1.0 - p)
    assert torch.unique(mask).numel() == 2
    assert torch.all((mask == 0) | torch.isclose(mask, torch.tensor(kept)))
    rate = (mask == 0).float().mean().item()
    band = 5 * math.sqrt(p * (1 - p) / n)  # five standard deviations
    assert abs(rate - p) < band
    assert abs(mask.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)  # E[z] = 1


def test_unscaled_mask_is_binary() -> None:
    mask = draw_mask((1000,), 0.3, scale=False)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_rates_outside_unit_interval_are_refused(p: float) -> None:
    with pytest.raises(ValueError):
        draw_mask((3,), p)
    with pytest.raises(ValueError):
        ActivationDropout(p, "step")


def test_mask_shapes_follow_the_granularity_table() -> None:
    shape = (7, 3, 5)
    assert mask_shape(shape, "step") == (7, 3, 5)
    assert mask_shape(shape, Granularity.sequence) == (1, 3, 5)
    assert mask_shape(shape, "batch") == (1, 1, 5)
    with pytest.raises(ValueError):
        mask_shape(shape, "epoch")


def _dropped(granularity: str) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.ones(30, 8, 64)
    return apply_mask(x, 0.5, granularity)


def test_step_masks_are_fresh_at_every_step_and_row() -> None:
    y = _dropped("step")
    assert not torch.equal(y[0], y[1])
    assert not torch.equal(y[0, 0], y[0, 1])


def test_sequence_masks_are_constant_over_time_and_differ_between_rows() -> None:
    y = _dropped("sequence")
    assert torch.equal(y, y[:1].expand_as(y))
    assert not torch.equal(y[0, 0], y[0, 1])


def test_batch_masks_are_shared_by_rows_and_steps() -> None:
    y = _dropped("batch")
    assert torch.equal(y, y[:1, :1].expand_as(y))
    assert (y == 0).any() and (y == 2).any()


def test_explicit_mask_replaces_the_draw() -> None:
    x = torch.randn(4, 2, 3)
    mask = torch.tensor([1.0, 0.0, 2.0])
    assert torch.equal(apply_mask(x, 0.5, "batch", mask=mask), x * mask)


def test_activation_dropout_is_identity_in_eval_and_draws_in_train() -> None:
    dropout = ActivationDropout(0.5, "step")
    x = torch.randn(10, 4, 16)
    dropout.eval()
    assert torch.equal(dropout(x), x)
    assert torch.equal(dropout(x), dropout(x))
    dropout.train()
    y = dropout(x)
    assert ((y == 0) | torch.isclose(y, 2 * x)).all()
    assert (y == 0).any()
    assert not torch.equal(dropout(x), y)


def test_zero_rate_is_identity_in_training() -> None:
    dropout = ActivationDropout(0.0, "step").train()
    x = torch.randn(5, 2, 3)
    assert torch.equal(dropout(x), x)


@pytest.mark.parametrize("sampler", [keep_from_bits, keep_from_uniform])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.65])
def test_both_samplers_drop_at_rate_p(sampler, p: float) -> None:
    """The CPU (random bits) and accelerator (uniform) samplers, both checked here."""
    generator = torch.Generator().manual_seed(7)
    n = 400_000
    keep = sampler((n,), p, torch.device("cpu"), generator)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    rate = 1.0 - keep.float().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 2**-16
    # neighbouring entries are independent (the words come from shared 64-bit draws)
    pairs = keep[: n // 4 * 4].view(-1, 4).float()
    both = (pairs[:, 0] * pairs[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 0.01


def test_generator_makes_masks_reproducible() -> None:
    first = draw_mask((50, 50), 0.3, generator=torch.Generator().manual_seed(3))
    second = draw_mask((50, 50), 0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


# --- every mask of a forward pass in one draw (rnnreg/model/regularizers/pool.py) -------

POOL_REQUESTS = [  # (shape, p, scale, dtype, own storage): rates, scaling and dtypes of a
    ((1, 4, 5), 0.5, True, torch.float32, False),  # Gal/AWD pass, in-step masks on their own
    ((10, 1), 0.1, True, torch.float32, True),
    ((3, 4, 7), 0.25, False, torch.float32, False),
    ((8, 5), 0.4, True, torch.float64, True),
    ((1, 1, 3), 0.5, True, torch.float32, False),
]


def _draw_requests() -> list[torch.Tensor]:
    return [
        draw_mask(shape, p, scale=scale, dtype=dtype, own_storage=own)
        for shape, p, scale, dtype, own in POOL_REQUESTS
    ]


def test_pooled_masks_on_a_cpu_are_the_one_by_one_masks_and_leave_the_same_stream() -> None:
    """One draw for all: the same 64-bit words in the same order, so the same masks, and
    the generator where the one-by-one draws leave it."""
    from rnnreg.model.regularizers.pool import MaskPlan, pooled, recording

    torch.manual_seed(4)
    with recording() as recorder:
        one_by_one = _draw_requests()
    after = torch.get_rng_state()
    plan = MaskPlan(recorder.draws)
    assert plan.poolable and isinstance(plan.threshold, torch.Tensor)  # rates differ
    assert plan.scales is not None  # three fp32 masks without own storage: one scale
    torch.manual_seed(4)
    with pooled(plan):
        together = _draw_requests()
    for a, b, request in zip(one_by_one, together, POOL_REQUESTS, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        assert b.is_contiguous()
        if request[-1]:  # a tensor of its own, not a view into the draw
            assert b.storage_offset() == 0 and b.untyped_storage().nbytes() == b.nbytes
    assert torch.equal(torch.get_rng_state(), after)


def test_the_masks_outside_compiled_code_are_scaled_in_one_operator() -> None:
    """One ``mul`` for the three viewed masks, one for each of the two with own storage."""
    from rnnreg.core.opcount import count_operators
    from rnnreg.model.regularizers.pool import MaskPlan, pooled, recording

    with recording() as recorder:
        _draw_requests()
    plan = MaskPlan(recorder.draws)

    def draw() -> None:
        with pooled(plan):
            _draw_requests()

    counts = count_operators(draw, steps=1)
    scales = counts.names["aten::mul"] + counts.names["aten::mul_"]
    assert scales == 3, counts.names


def test_a_request_outside_the_plan_is_refused() -> None:
    from rnnreg.model.regularizers.pool import MaskPlan, pooled, recording

    with recording() as recorder:
        _draw_requests()
    with pytest.raises(RuntimeError, match="does not hold"), pooled(MaskPlan(recorder.draws)):
        draw_mask((2, 2), 0.3)
    with pytest.raises(RuntimeError, match="drew 1 of the 5 masks"):
        with pooled(MaskPlan(recorder.draws)):
            draw_mask(*POOL_REQUESTS[0][:2], own_storage=POOL_REQUESTS[0][-1])


@pytest.mark.parametrize("variant", ["gal", "awd"])
def test_a_training_forward_draws_its_masks_once_and_as_before(make_config, variant) -> None:
    """The language model's training forward pass: one random draw for every mask, and
    the logits of the one-by-one draws (same seed, CPU)."""
    from rnnreg.core.opcount import count_operators
    from rnnreg.model.lm import LanguageModel

    run = make_config(f"variant={variant}")
    torch.manual_seed(0)
    model = LanguageModel(50, run.model, run.variant).train()
    tokens = torch.randint(50, (8, 4))
    with torch.no_grad():
        torch.manual_seed(2)
        pooled_logits, _ = model(tokens, model.init_state(4))  # records the plan, then pools
        torch.manual_seed(2)
        single_logits, _ = model._forward(tokens, model.init_state(4), None, None)
        counts = count_operators(lambda: model(tokens, model.init_state(4)), steps=1)
    assert len(model._mask_plans) == 1
    assert torch.equal(pooled_logits, single_logits)
    assert counts.names["aten::random_"] == 1, counts.names


def test_window_lengths_with_the_same_masks_share_one_threshold_tensor(make_config) -> None:
    """AWD-LSTM's variable BPTT: its weight and sequence masks do not depend on the window's
    length, so the plans of every length hold one per-entry threshold tensor, not a copy each."""
    from rnnreg.model.lm import LanguageModel

    run = make_config("variant=awd")
    model = LanguageModel(50, run.model, run.variant).train()
    with torch.no_grad():
        for length in (6, 9):
            model(torch.randint(50, (length, 4)), model.init_state(4))
    short, long = model._mask_plans.values()
    assert isinstance(short.threshold, torch.Tensor) and short.threshold is long.threshold
