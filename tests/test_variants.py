"""Every variant of conf/variant composes, trains a step, and takes the right path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnreg.config.schema import CONF_DIR, group_options
from rnnreg.model.lm import LanguageModel
from rnnreg.model.regularizers.embedding import embed_with_type_dropout

FUSED = {"none", "zaremba", "weight_drop"}
ALL = ["gal", "gal_untied", "moon", "none", "semeniuta", "weight_drop", "zaremba", "zoneout"]


def test_every_spec_variant_has_a_config() -> None:
    assert set(ALL) <= set(group_options("variant"))


@pytest.mark.parametrize("variant", ALL)
def test_variant_trains_a_step_and_evaluates_deterministically(make_config, variant: str):
    run = make_config(f"variant={variant}")
    assert run.variant.name == variant
    torch.manual_seed(0)
    model = LanguageModel(30, run.model, run.variant)
    assert model.lstm_path == ("fused" if variant in FUSED else "loop")
    tokens = torch.randint(0, 30, (9, 4))
    logits, _ = model.train()(tokens[:-1], model.init_state(4))
    loss = F.cross_entropy(logits.reshape(-1, 30), tokens[1:].reshape(-1))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    first, _ = model(tokens, model.init_state(4))
    second, _ = model(tokens, model.init_state(4))
    assert torch.equal(first, second)


def test_variants_compose_with_overrides(make_config) -> None:
    run = make_config(
        "variant=zaremba", "variant.zoneout_cell=0.25", "variant.zoneout_hidden=0.025"
    )
    assert run.variant.rates()["p_input"] == 0.5
    assert (run.variant.zoneout_cell, run.variant.zoneout_hidden) == (0.25, 0.025)
    assert LanguageModel(30, run.model, run.variant).lstm_path == "loop"


def test_untied_gal_moves_the_input_masks_into_the_layers(make_config) -> None:
    run = make_config("variant=gal_untied")
    model = LanguageModel(30, run.model, run.variant)
    assert model.input_dropout.p == 0.0 and model.between_dropout.p == 0.0
    assert model.layers[0].dropout.p_input == run.variant.p_input
    assert model.layers[1].dropout.p_input == run.variant.p_between
    assert model.layers[0].dropout.untied


def test_forced_paths(make_config) -> None:
    run = make_config("variant=none", "model.lstm_impl=loop")
    assert LanguageModel(30, run.model, run.variant).lstm_path == "loop"
    run = make_config("variant=moon", "model.lstm_impl=fused")
    with pytest.raises(ValueError, match="loop path"):
        LanguageModel(30, run.model, run.variant)


class TestEmbeddingDropout:
    def test_whole_word_types_are_dropped(self) -> None:
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(50, 8)
        tokens = torch.tensor([[3, 7, 3], [7, 3, 9]])
        mask = torch.zeros(50)
        mask[7] = 2.0
        out = embed_with_type_dropout(embedding, tokens, 0.5, training=True, mask=mask)
        assert torch.all(out[tokens == 3] == 0)
        torch.testing.assert_close(out[tokens == 7], 2 * embedding.weight[7].expand(2, 8))

    def test_rate_and_scaling_over_the_vocabulary(self) -> None:
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(20_000, 2)
        with torch.no_grad():
            embedding.weight.fill_(1.0)
        tokens = torch.arange(20_000).view(-1, 1)
        out = embed_with_type_dropout(embedding, tokens, 0.3, training=True)[:, 0, 0]
        assert torch.all((out == 0) | torch.isclose(out, torch.tensor(1 / 0.7)))
        assert abs((out == 0).float().mean().item() - 0.3) < 0.02

    def test_identity_in_eval_and_one_mask_per_replica(self) -> None:
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(1000, 4)
        tokens = torch.arange(1000).view(1, 1000).repeat(1, 2)  # two replicas of 1000 rows
        out = embed_with_type_dropout(embedding, tokens, 0.5, training=False)
        assert torch.equal(out, embedding(tokens))
        out = embed_with_type_dropout(embedding, tokens, 0.5, training=True, replicas=2)
        first, second = out[0, :1000] == 0, out[0, 1000:] == 0
        assert not torch.equal(first, second)
        assert 0.4 < first.float().mean().item() < 0.6

    def test_sequence_granularity_ties_repeats_within_a_row_only(self) -> None:
        """Gal's Lua form: a mask per batch row and window, tied over repeated words."""
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(50, 4)
        tokens = torch.tensor([[3, 3], [7, 3], [3, 7], [3, 3]])  # (T=4, B=2)
        mask = torch.ones(2, 50)
        mask[0, 3] = 0.0  # word 3 dropped in row 0 only
        out = embed_with_type_dropout(
            embedding, tokens, 0.5, training=True, granularity="sequence", mask=mask
        )
        assert torch.all(out[:, 0][tokens[:, 0] == 3] == 0)
        torch.testing.assert_close(out[:, 1], embedding(tokens[:, 1]))
        # drawn: every occurrence in a row shares its fate; rows are independent
        tokens = torch.full((30, 400), 5)
        out = embed_with_type_dropout(
            embedding, tokens, 0.5, training=True, granularity="sequence"
        )[..., 0]
        dropped = out == 0
        assert torch.equal(dropped, dropped[:1].expand_as(dropped))
        assert 0.4 < dropped[0].float().mean().item() < 0.6

    def test_step_granularity_does_not_tie_repeats(self) -> None:
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(50, 4)
        tokens = torch.full((400, 2), 5)
        out = embed_with_type_dropout(embedding, tokens, 0.5, training=True, granularity="step")
        dropped = out[..., 0] == 0
        assert 0.4 < dropped.float().mean().item() < 0.6
        assert not torch.equal(dropped, dropped[:1].expand_as(dropped))


def test_moons_memory_scale_has_one_default(make_config) -> None:
    """Declared once, in the schema; variant=moon does not set it again."""
    from rnnreg.config.dropout import LayerDropout, MemoryScale

    assert LayerDropout().memory_scale is MemoryScale.on_output
    assert make_config("variant=moon").variant.memory_scale is MemoryScale.on_output
    lines = (CONF_DIR / "variant" / "moon.yaml").read_text().splitlines()
    assert not [line for line in lines if line.startswith("memory_scale:")]
