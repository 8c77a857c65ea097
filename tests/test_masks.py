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
