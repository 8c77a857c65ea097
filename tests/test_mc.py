"""MC-dropout evaluation: averaged probabilities over K samples in one batched pass."""

from __future__ import annotations

import pytest
import torch

from rnnreg.config.schema import group_options
from rnnreg.data.batching import batchify
from rnnreg.evaluation.mc import evaluate_mc
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.model.lm import LanguageModel
from rnnreg.model.regularizers.masks import HeldMasks, MCDropout

ALL_VARIANTS = group_options("variant")


def setup(make_config, variant: str, device: torch.device | str = "cpu"):
    run = make_config(f"variant={variant}")
    torch.manual_seed(0)
    model = LanguageModel(30, run.model, run.variant).to(device)
    source = batchify(torch.randint(0, 30, (400,), generator=torch.Generator().manual_seed(1)), 4)
    return model, source.to(device)


@pytest.mark.parametrize("per_pass", [0, 2])
def test_without_dropout_mc_equals_standard_evaluation(make_config, per_pass: int) -> None:
    model, source = setup(make_config, "none")
    standard = evaluate(model, source, bptt=8)
    for samples in (1, 3):
        mc = evaluate_mc(model, source, bptt=8, samples=samples, replicas_per_pass=per_pass)
        assert mc.tokens == standard.tokens
        assert mc.perplexity == pytest.approx(standard.perplexity, rel=1e-5)


def test_mc_averages_probabilities_not_log_probabilities(make_config) -> None:
    """The estimate equals exp(-mean log mean_k p_k) computed here by hand (one window)."""
    model, source = setup(make_config, "gal")
    model.reset_parameters(1.0)  # confident, mask-sensitive predictions
    model.eval()
    torch.manual_seed(5)
    whole = evaluate_mc(model, source, bptt=source.size(0), samples=6)
    torch.manual_seed(5)  # the same draws: the same six replicas over one window
    with torch.no_grad():
        state = model.init_state(6 * source.size(1))
        logits, _ = model(source[:-1].repeat(1, 6), state, mc=MCDropout(replicas=6))
    log_p = torch.log_softmax(logits.double(), -1)
    targets = source[1:].repeat(1, 6).unsqueeze(-1)
    per_sample = log_p.gather(-1, targets).squeeze(-1).view(-1, 6, source.size(1))
    expected = torch.exp(-torch.log(per_sample.exp().mean(1)).mean()).item()
    assert whole.perplexity == pytest.approx(expected, rel=1e-6)
    geometric = torch.exp(-per_sample.mean(1).mean()).item()  # averaging log-probabilities
    assert whole.perplexity < geometric * 0.95  # Jensen: the mean of p is larger
    standard = evaluate(model, source, bptt=8).perplexity
    assert evaluate_mc(model, source, bptt=8, samples=6).perplexity != pytest.approx(standard)


@pytest.mark.parametrize("variant", [v for v in ALL_VARIANTS if v != "none"])
def test_replicas_get_independent_masks(make_config, variant: str, device: torch.device) -> None:
    model, source = setup(make_config, variant, device)
    model.eval()
    inputs = source[:10].repeat(1, 2)
    logits, _ = model(inputs, model.init_state(8), mc=MCDropout(replicas=2))
    assert not torch.allclose(logits[:, :4], logits[:, 4:]), variant  # masks differ
    logits, _ = model(inputs, model.init_state(8))
    # Rows of one batched product: a kernel's blocking may round the two halves
    # differently in the last bit (AVX2 EPYC), so equal up to rounding, not bitwise.
    torch.testing.assert_close(logits[:, :4], logits[:, 4:], rtol=1e-5, atol=1e-6)


def _mc_logits(model, inputs, state, mc):
    with torch.no_grad():
        return model(inputs, state, mc=mc)[0]


@pytest.mark.parametrize("variant", ["gal", "gal_untied", "weight_drop", "zoneout"])
def test_held_masks_are_reused_across_windows(make_config, variant: str) -> None:
    """hold_masks: the second window sees the first window's time-constant masks."""
    model, source = setup(make_config, variant)
    model.eval()
    inputs = source[:10].repeat(1, 2)
    state = model.init_state(8)
    held = MCDropout(replicas=2, held=HeldMasks())
    first = _mc_logits(model, inputs, state, held)
    second = _mc_logits(model, inputs, state, held)
    new_sample = MCDropout(replicas=2, held=HeldMasks())  # a new sample: new masks
    third = _mc_logits(model, inputs, state, new_sample)
    per_window = MCDropout(replicas=2)
    fourth, fifth = (
        _mc_logits(model, inputs, state, per_window),
        _mc_logits(model, inputs, state, per_window),
    )
    assert not torch.allclose(first[:, :4], first[:, 4:]), "replicas must stay independent"
    assert not torch.allclose(first, third)
    assert not torch.allclose(fourth, fifth)
    if variant == "zoneout":  # per-step masks are never held
        assert not torch.allclose(first, second)
    else:
        assert torch.equal(first, second)


def test_stream_draw_equals_one_window_over_the_whole_split(make_config) -> None:
    """With masks held, cutting the stream into windows changes nothing: the sample is
    one draw of the weights run over the whole split (Gal's run_MC_test)."""
    model, source = setup(make_config, "gal_untied")
    model.reset_parameters(1.0)
    torch.manual_seed(3)
    whole = evaluate_mc(model, source, bptt=source.size(0), samples=5, hold_masks=True)
    torch.manual_seed(3)
    windows = evaluate_mc(model, source, bptt=7, samples=5, hold_masks=True)
    assert windows.perplexity == pytest.approx(whole.perplexity, rel=1e-5)
    torch.manual_seed(3)
    redrawn = evaluate_mc(model, source, bptt=7, samples=5)
    assert redrawn.perplexity != pytest.approx(whole.perplexity, rel=1e-3)


def test_word_type_mask_can_be_turned_off_in_mc(make_config) -> None:
    run = make_config("variant=none", "variant.p_embedding=0.5")
    torch.manual_seed(0)
    model = LanguageModel(30, run.model, run.variant)
    model.reset_parameters(1.0)  # confident, mask-sensitive predictions
    source = batchify(torch.randint(0, 30, (400,), generator=torch.Generator().manual_seed(1)), 4)
    standard = evaluate(model, source, bptt=8)
    off = evaluate_mc(model, source, bptt=8, samples=3, embedding_dropout=False)
    on = evaluate_mc(model, source, bptt=8, samples=3)
    assert off.perplexity == pytest.approx(standard.perplexity, rel=1e-5)
    assert on.perplexity != pytest.approx(standard.perplexity, rel=1e-3)


def test_held_masks_keep_the_generators_state_not_the_masks() -> None:
    """A held mask comes back equal at every request, the random stream goes on as if it
    were held (a later request draws nothing from it), and what is kept is a generator
    state, not the 4 MB mask: MC memory in stream mode does not grow with K x mask size."""

    def draw() -> torch.Tensor:
        return torch.rand(1000, 1000)

    torch.manual_seed(0)
    held = HeldMasks()
    first = held.child("layer").get("weight_hh", draw)
    between = torch.rand(3)
    again = held.child("layer").get("weight_hh", draw)
    after = torch.rand(3)
    torch.manual_seed(0)
    expected = draw()
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert torch.equal(between, torch.rand(3)) and torch.equal(after, torch.rand(3))
    assert held.held_bytes() < 20_000 < first.numel() * first.element_size()
