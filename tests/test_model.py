"""The language model: initialisation, p=0 parity, where Zaremba's masks go."""

from __future__ import annotations

import torch
from torch import nn

from rnnreg.config.schema import ModelConfig, VariantConfig
from rnnreg.model.lm import LanguageModel, count_parameters

SMALL = ModelConfig(name="t", embedding_size=12, hidden_size=12, num_layers=2, init_range=0.1)
ZAREMBA = VariantConfig(name="zaremba", p_input=0.5, p_between=0.5, p_output=0.5)


def _tokens(steps: int = 9, batch: int = 3, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (steps, batch), generator=torch.Generator().manual_seed(3))


def test_every_parameter_is_uniform_in_init_range() -> None:
    torch.manual_seed(0)
    model = LanguageModel(50, SMALL, VariantConfig())
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.1, name
        assert parameter.std() > 0.03, name  # biases too: not zeros, not a forget offset


def test_parameter_count_of_zaremba_small() -> None:
    model = LanguageModel(10_000, ModelConfig(name="small"), VariantConfig())
    lstm = 2 * (4 * 200 * (200 + 200) + 2 * 4 * 200)
    assert count_parameters(model) == 10_000 * 200 + lstm + 200 * 10_000 + 10_000


def test_tied_decoder_shares_the_embedding() -> None:
    cfg = ModelConfig(name="t", embedding_size=12, hidden_size=12, tie_weights=True)
    model = LanguageModel(50, cfg, VariantConfig())
    assert model.decoder.weight is model.embedding.weight
    assert (
        count_parameters(model) == count_parameters(LanguageModel(50, SMALL, VariantConfig())) - 600
    )


def _reference_logits(model: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """The same weights run by one multi-layer nn.LSTM: the plain model."""
    stacked = nn.LSTM(12, 12, num_layers=2)
    with torch.no_grad():
        for index, layer in enumerate(model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(stacked, f"{name}_l{index}").copy_(getattr(layer.lstm, f"{name}_l0"))
    hidden, _ = stacked(model.embedding(tokens))
    return model.decoder(hidden)


def test_zero_rates_give_the_plain_model_in_training_mode() -> None:
    torch.manual_seed(0)
    variant = VariantConfig(name="zaremba", p_input=0.0, p_between=0.0, p_output=0.0)
    model = LanguageModel(50, SMALL, variant).train()
    tokens = _tokens()
    logits, _ = model(tokens, model.init_state(3))
    torch.testing.assert_close(logits, _reference_logits(model, tokens), rtol=1e-6, atol=1e-6)


def test_eval_is_deterministic_and_equals_the_plain_model() -> None:
    torch.manual_seed(0)
    model = LanguageModel(50, SMALL, ZAREMBA).eval()
    tokens = _tokens()
    first, _ = model(tokens, model.init_state(3))
    second, _ = model(tokens, model.init_state(3))
    assert torch.equal(first, second)
    torch.testing.assert_close(first, _reference_logits(model, tokens), rtol=1e-6, atol=1e-6)


def test_zaremba_masks_sit_on_the_non_recurrent_connections_only() -> None:
    torch.manual_seed(0)
    model = LanguageModel(50, SMALL, ZAREMBA).train()
    seen: dict[str, torch.Tensor] = {}
    model.layers[0].register_forward_hook(
        lambda m, args, out: seen.update(l1_in=args[0], l1_out=out[0])
    )
    model.layers[1].register_forward_hook(
        lambda m, args, out: seen.update(l2_in=args[0], l2_out=out[0])
    )
    model.decoder.register_forward_hook(lambda m, args, out: seen.update(dec_in=args[0]))
    tokens = _tokens(steps=40, batch=6)
    model(tokens, model.init_state(6))
    embedded = model.embedding(tokens)
    pairs = {
        "input": (seen["l1_in"], embedded),
        "between": (seen["l2_in"], seen["l1_out"]),
        "output": (seen["dec_in"], seen["l2_out"]),
    }
    for site, (dropped, raw) in pairs.items():
        zero = dropped == 0
        assert torch.allclose(dropped[~zero], 2 * raw[~zero]), site
        rate = zero.float().mean().item()
        assert 0.4 < rate < 0.6, site
        # step granularity: a fresh mask at every time step
        assert not torch.equal(zero[0], zero[1]), site


def test_recurrence_is_undropped_under_zaremba() -> None:
    """With only the recurrent path active (inputs zeroed), Zaremba changes nothing."""
    torch.manual_seed(0)
    variant = VariantConfig(name="zaremba", p_input=0.0, p_between=0.0, p_output=0.0)
    plain = LanguageModel(50, SMALL, variant)
    zaremba = LanguageModel(50, SMALL, ZAREMBA)
    zaremba.load_state_dict(plain.state_dict())
    state = [(torch.randn(1, 2, 12), torch.randn(1, 2, 12)) for _ in range(2)]
    x = torch.zeros(5, 2, 12)
    for a, b in zip(plain.layers, zaremba.train().layers, strict=True):
        torch.testing.assert_close(a(x, state[0])[0], b(x, state[0])[0])


def test_forward_leaves_parameters_untouched() -> None:
    torch.manual_seed(0)
    model = LanguageModel(50, SMALL, ZAREMBA).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(_tokens(), model.init_state(3))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
