"""The cache pointer and dynamic evaluation against hand computations and their rules."""

from __future__ import annotations

import math

import pytest
import torch

from rnnreg.evaluation.cache_pointer import cache_scores, evaluate_cache
from rnnreg.evaluation.dynamic import evaluate_dynamic, gradient_statistics
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.model.lm import Activations, LanguageModel

V = 7


def tiny_model(make_config) -> LanguageModel:
    run = make_config("model.embedding_size=6", "model.hidden_size=5")
    torch.manual_seed(3)
    model = LanguageModel(V, run.model, run.variant)
    model.reset_parameters(0.5)
    return model.eval()


def stream(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (length, 1), generator=torch.Generator().manual_seed(seed))


def test_cache_mixture_equals_a_hand_computation(make_config) -> None:
    model, source = tiny_model(make_config), stream(40)
    window, theta, lam = 6, 0.7, 0.3
    with torch.no_grad():  # the whole stream in one pass: h_t and p_vocab per position
        activations = Activations()
        logits, _ = model(source[:-1], model.init_state(1), activations)
    h = activations.last[:, 0].double()
    p_vocab = torch.softmax(logits[:, 0].double(), -1)
    words = source[:, 0].tolist()
    nll = 0.0
    for t in range(len(words) - 1):  # predicting words[t + 1] from h_t
        p = p_vocab[t, words[t + 1]].item()
        cached = range(max(0, t - window), t)  # never t itself
        if cached:
            weights = [math.exp(theta * float(h[t] @ h[i])) for i in cached]
            pairs = zip(weights, cached, strict=True)
            hit = sum(w for w, i in pairs if words[i + 1] == words[t + 1])
            p = (1 - lam) * p + lam * hit / sum(weights)
        nll -= math.log(p)
    ours = evaluate_cache(model, source, bptt=9, window=window, theta=theta, interpolation=lam)
    assert ours.tokens == len(words) - 1
    assert ours.nll_sum == pytest.approx(nll, rel=1e-5)


def test_lambda_zero_is_standard_evaluation(make_config) -> None:
    model, source = tiny_model(make_config), stream(60, seed=1)
    cached = evaluate_cache(model, source, bptt=7, window=10, theta=1.0, interpolation=0.0)
    standard = evaluate(model, source, bptt=7)
    assert cached.tokens == standard.tokens
    assert cached.perplexity == pytest.approx(standard.perplexity, rel=1e-6)


def test_a_token_is_never_in_its_own_cache(make_config) -> None:
    """Window 1: the only cached next word of position t is w_t (from i = t - 1), so
    p_cache(w_{t+1}) = [w_t = w_{t+1}]; with t in its own cache it would always be > 0."""
    model = tiny_model(make_config)
    source = torch.tensor([[1], [1], [2], [2], [3], [1], [1], [4]])
    scores = cache_scores(model, source, bptt=3, window=1, thetas=[1.0])
    words = source[:, 0].tolist()
    expected = [float(words[t] == words[t + 1]) for t in range(len(words) - 1)]
    assert not scores.has_cache[0]  # nothing before the first position
    assert scores.p_cache[1.0][1:].tolist() == expected[1:]


def test_cosine_similarity_is_selectable_and_differs(make_config) -> None:
    model, source = tiny_model(make_config), stream(30, seed=2)
    dot = evaluate_cache(model, source, 8, 10, 2.0, 0.5, similarity="dot").perplexity
    cosine = evaluate_cache(model, source, 8, 10, 2.0, 0.5, similarity="cosine").perplexity
    assert dot != pytest.approx(cosine)
    with pytest.raises(ValueError, match="similarity"):
        evaluate_cache(model, source, 8, 10, 2.0, 0.5, similarity="l2")


def _ms(model: LanguageModel) -> dict[str, torch.Tensor]:
    return gradient_statistics(model, stream(400, seed=4)[:, 0], segment=5, batch_size=4)


def test_eta_zero_is_standard_evaluation_and_weights_are_restored(make_config) -> None:
    model, source = tiny_model(make_config), stream(52, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = _ms(model)
    frozen = evaluate_dynamic(model, source, ms, lr=0.0, decay=0.02, epsilon=1e-5, segment=5)
    standard = evaluate(model, source, bptt=5)
    assert frozen.perplexity == pytest.approx(standard.perplexity, rel=1e-6)
    moved = evaluate_dynamic(model, source, ms, lr=0.05, decay=0.02, epsilon=1e-5, segment=5)
    assert moved.perplexity != pytest.approx(standard.perplexity, rel=1e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_segment_is_scored_before_its_update(make_config) -> None:
    """One segment only: scored before the update, its loss is the standard one whatever
    η; scored after, a large η would change it."""
    model, source = tiny_model(make_config), stream(6, seed=6)  # 5 predictions = 1 segment
    ms = _ms(model)
    dynamic = evaluate_dynamic(model, source, ms, lr=1.0, decay=0.0, epsilon=1e-5, segment=5)
    assert dynamic.perplexity == pytest.approx(evaluate(model, source, 5).perplexity, rel=1e-6)


def test_three_segments_equal_the_update_rule_by_hand(make_config) -> None:
    """θ_j = θ_{j-1} − η g_j / (MS + ε) + λ r ∘ (θ₀ − θ_{j-1}), each segment scored under
    θ_{j-1}, computed here one parameter at a time."""
    model, source = tiny_model(make_config), stream(16, seed=8)  # 15 predictions: 3 segments
    ms = _ms(model)
    lr, decay, eps = 0.05, 0.3, 1e-5
    got = evaluate_dynamic(model, source, ms, lr=lr, decay=decay, epsilon=eps, segment=5)
    hand = tiny_model(make_config)
    theta0 = {n: p.detach().clone() for n, p in hand.named_parameters()}
    scale = torch.stack([m.mean() for m in ms.values()]).mean()
    state, nll = hand.init_state(1), 0.0
    for start in range(0, 15, 5):
        logits, state = hand(source[start : start + 5], state)
        state = [(h.detach(), c.detach()) for h, c in state]
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, V), source[start + 1 : start + 6, 0]
        )
        nll += loss.item() * 5
        hand.zero_grad()
        loss.backward()
        with torch.no_grad():
            for name, p in hand.named_parameters():
                rate = (ms[name] / scale).clamp(max=1 / decay)
                p.copy_(p - lr * p.grad / (ms[name] + eps) + decay * rate * (theta0[name] - p))
    assert got.nll_sum == pytest.approx(nll, rel=1e-6)


def test_dynamic_evaluation_adapts_to_a_repeated_stream(make_config) -> None:
    model = tiny_model(make_config)
    source = torch.tensor([1, 4, 2, 6, 3, 0] * 20).view(-1, 1)
    ms = _ms(model)
    dynamic = evaluate_dynamic(model, source, ms, lr=0.02, decay=0.0, epsilon=1e-5, segment=5)
    assert dynamic.perplexity < 0.8 * evaluate(model, source, 5).perplexity


def test_gradient_statistics_are_root_mean_squares(make_config) -> None:
    model = tiny_model(make_config)
    train = stream(400, seed=4)[:, 0]
    ms = gradient_statistics(model, train, segment=5, batch_size=4, max_batches=2)
    from rnnreg.data.batching import batchify, windows

    data, state, squares = batchify(train, 4), model.init_state(4), None
    for count, (_, inputs, targets) in enumerate(windows(data, 5)):
        if count == 2:
            break
        model.zero_grad()
        logits, state = model(inputs, state)
        state = [(h.detach(), c.detach()) for h, c in state]
        torch.nn.functional.cross_entropy(logits.view(-1, V), targets.reshape(-1)).backward()
        grad = model.decoder.bias.grad.clone()
        squares = grad**2 if squares is None else squares + grad**2
    torch.testing.assert_close(ms["decoder.bias"], torch.sqrt(squares / 2))


FAST_EXTRAS = (
    "eval.cache.window=30",
    "eval.dynamic.stats_max_batches=5",
    "eval.dynamic.stats_batch_size=4",
    "eval.dynamic.grid_tokens=40",
)


def test_a_run_reports_cache_and_dynamic_evaluations(make_config, tmp_path) -> None:
    from rnnreg.reporting.report import build_report
    from rnnreg.training.trainer import Trainer

    run = make_config(
        "trainer.epochs=1", "eval.cache.enabled=true", "eval.dynamic.enabled=true", *FAST_EXTRAS
    )
    summary = Trainer(run, tmp_path / "outputs" / "run").fit()
    for key in ("val_ppl_cache", "test_ppl_cache", "val_ppl_dynamic", "test_ppl_dynamic"):
        assert summary[key] is not None and math.isfinite(summary[key]), key
    text = build_report(tmp_path / "outputs").read_text()
    # each evaluation a sub-row, with the settings that decide its number and differ from
    # the preset's (the grids and switches decide none)
    assert "| cache (cache.window=30) |" in text
    assert "| dynamic (dynamic.stats_batch_size=4, dynamic.stats_max_batches=5) |" in text


def test_rescore_an_existing_run_with_settings_chosen_on_validation(make_config, tmp_path) -> None:
    import json

    from rnnreg import RnnregError
    from rnnreg.cli.rescore import main, rescore
    from rnnreg.training.trainer import Trainer

    run_dir = tmp_path / "run"
    Trainer(make_config("trainer.epochs=1"), run_dir).fit()
    argv = [str(run_dir), "--grid", "eval.cache.theta_grid=[0.5,1.0]", *FAST_EXTRAS]
    assert main(argv) == 0  # the CLI: --grid before the overrides
    out = json.loads((run_dir / "rescore.json").read_text())
    assert out["cache"]["chosen_on_validation"] and out["dynamic"]["chosen_on_validation"]
    assert out["cache"]["theta"] in (0.5, 1.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_ppl_cache"] == out["test_ppl_cache"]
    assert summary["status"] == "completed"  # the rest of the summary is kept
    assert set(out["eval_tokens_per_s"]) == {"standard", "cache", "dynamic"}
    with pytest.raises(RnnregError, match="only eval"):
        rescore(run_dir, ["model.hidden_size=3"], grid=False)


def test_the_full_window_rule_waits_until_the_cache_holds_a_window(make_config) -> None:
    """Grave et al. mix from the first cached position; AWD's pointer.py (and
    experiment=awd_ptb) only once the cache holds the whole window."""
    model, source = tiny_model(make_config), stream(20, seed=9)
    early = cache_scores(model, source, bptt=6, window=4, thetas=[1.0])
    full = cache_scores(model, source, bptt=6, window=4, thetas=[1.0], full_window=True)
    assert early.has_cache.tolist() == [False] + [True] * 18
    assert full.has_cache.tolist() == [False] * 4 + [True] * 15
    assert make_config("experiment=awd_ptb").eval.cache.full_window
