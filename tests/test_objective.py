"""Two-pass objectives: fraternal dropout, ELD and the Π-model (rnnreg/training/objective.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rnnreg.config.schema import ModelConfig, ObjectiveConfig, VariantConfig
from rnnreg.model.lm import LanguageModel
from rnnreg.training.loss import window_loss

VOCAB = 11
GAL = dict(
    p_input=0.3,
    p_between=0.3,
    p_output=0.3,
    p_hidden=0.2,
    activation_granularity="sequence",
    ar_alpha=2.0,
    tar_beta=1.0,
)


def _model(dtype=torch.float32) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(name="tiny", embedding_size=5, hidden_size=5, num_layers=2, compile=False)
    return LanguageModel(VOCAB, config, VariantConfig(name="gal", **GAL)).to(dtype).train()


def _window(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(VOCAB, (7, 3), generator=gen)
    return tokens[:-1], tokens[1:]


def _loss(model, objective: ObjectiveConfig, seed: int = 5):
    inputs, targets = _window()
    torch.manual_seed(seed)
    return window_loss(
        model, inputs, targets, model.init_state(3), model_variant(), True, objective
    )


def model_variant() -> VariantConfig:
    return VariantConfig(name="gal", **GAL)


def test_pi_with_kappa_zero_is_the_plain_step() -> None:
    model = _model()
    results = []
    for objective in (ObjectiveConfig(), ObjectiveConfig(name="pi", kappa=0.0)):
        model.zero_grad()
        w = _loss(model, objective)
        w.loss.backward()
        results.append(
            (w.loss.detach(), w.penalties, *(p.grad.clone() for p in model.parameters()))
        )
    for plain, pi in zip(*results, strict=True):
        torch.testing.assert_close(pi, plain, rtol=0, atol=0)


def _direct_ce(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_p = scores - scores.exp().sum(-1, keepdim=True).log()
    return -log_p.gather(-1, targets.unsqueeze(-1)).mean()


@pytest.mark.parametrize("name,kappa", [("fd", 0.15), ("eld", 0.25), ("pi", 0.15)])
def test_each_term_against_a_direct_computation(name: str, kappa: float) -> None:
    model = _model(torch.float64)
    inputs, targets = _window()
    w = _loss(model, ObjectiveConfig(name=name, kappa=kappa))
    torch.manual_seed(5)  # the same draws: pass 1, then pass 2
    first, state_1 = model(inputs, model.init_state(3))
    if name == "eld":
        model.eval()
    second, _ = model(inputs, model.init_state(3))
    model.train()
    penalty = kappa * ((first - second) ** 2).sum() / first.numel()
    ce = _direct_ce(first, targets)
    data = (ce + _direct_ce(second, targets)) / 2 if name == "fd" else ce
    steps = inputs.size(0)
    ar_tar = w.penalties.sum()
    torch.testing.assert_close(w.loss, steps * (data + penalty) + ar_tar, rtol=1e-12, atol=0)
    torch.testing.assert_close(w.nll, ce, rtol=1e-12, atol=0)  # pass 1's, for the log
    assert penalty > 0
    for (h, c), (h1, c1) in zip(w.state, state_1, strict=True):  # pass 1's state is carried
        torch.testing.assert_close(h, h1, rtol=0, atol=0)
        torch.testing.assert_close(c, c1, rtol=0, atol=0)


def test_ar_and_tar_act_on_pass_one_only() -> None:
    model = _model()
    plain = _loss(model, ObjectiveConfig())
    fraternal = _loss(model, ObjectiveConfig(name="fd", kappa=0.15))
    torch.testing.assert_close(fraternal.penalties, plain.penalties, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fd", "eld"])
def test_gradcheck_of_the_two_pass_loss(name: str) -> None:
    """Finite differences in float64 for every parameter of a tiny model, each pass's masks
    fixed by the seed."""
    model = _model(torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    inputs, targets = _window()
    objective = ObjectiveConfig(name=name, kappa=0.5)

    def loss(*values: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(5)
        given = dict(zip(names, values, strict=True))

        def run(tokens, state):  # the model's forward with the given parameters
            return torch.func.functional_call(model, given, (tokens, state))

        logits, _ = run(inputs, model.init_state(3))
        from rnnreg.training.objective import cross_entropy, objective_terms

        class Bound:  # what objective_terms calls: a forward, eval() and train()
            def __call__(self, tokens, state):
                return run(tokens, state)

            def eval(self):
                model.eval()

            def train(self):
                model.train()

        terms = objective_terms(
            Bound(),
            inputs,
            targets,
            model.init_state(3),
            objective,
            logits,
            cross_entropy(logits, targets),
        )
        return terms.data + terms.penalty

    assert torch.autograd.gradcheck(loss, params, atol=1e-6)


# --- rnnreg verify with an objective -------------------------------------------------


@pytest.mark.parametrize("variant", ["zaremba", "gal"])
@pytest.mark.parametrize("objective", ["fd", "eld", "pi"])
def test_verify_passes_for_each_objective_with_zaremba_and_gal(variant, objective) -> None:
    from rnnreg.cli.verify import _compose
    from rnnreg.verification.objective import objective_checks

    run = _compose([f"variant={variant}", f"objective={objective}"])
    rows = objective_checks(run.variant, run.objective)
    assert [r.name for r in rows] == [
        "objective terms",
        "objective state",
        "objective κ = 0",
        "objective gradient",
    ]
    assert all(r.ok for r in rows), [r.detail for r in rows if not r.ok]


def _failed_rows(objective: str = "fd") -> list[str]:
    from rnnreg.cli.verify import _compose
    from rnnreg.verification.objective import objective_checks

    run = _compose(["variant=gal", f"objective={objective}"])
    return [r.name for r in objective_checks(run.variant, run.objective) if not r.ok]


def test_verify_fails_a_penalty_summed_where_the_code_takes_a_mean(monkeypatch) -> None:
    from rnnreg.training import loss, objective

    def summed(model, inputs, targets, state, config, logits, nll):
        terms = objective.objective_terms(model, inputs, targets, state, config, logits, nll)
        return terms._replace(penalty=terms.penalty * logits.numel())

    monkeypatch.setattr(loss, "objective_terms", summed)
    assert _failed_rows() == ["objective terms"]


def test_verify_fails_when_pass_two_state_is_carried(monkeypatch) -> None:
    from rnnreg.verification import objective as checks

    right = checks.window_loss

    def carried_pass_two(model, inputs, targets, state, *rest):
        w = right(model, inputs, targets, state, *rest)
        return dataclasses.replace(w, state=model(inputs, state)[1])  # a fresh pass's state

    monkeypatch.setattr(checks, "window_loss", carried_pass_two)
    assert _failed_rows() == ["objective state"]


def test_verify_fails_a_pass_two_cut_from_the_graph(monkeypatch) -> None:
    from rnnreg.training import objective

    right = objective.second_pass
    monkeypatch.setattr(objective, "second_pass", lambda *args: right(*args).detach())
    assert _failed_rows("eld") == ["objective gradient"]
