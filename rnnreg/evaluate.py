"""Perplexity of a split: exp(mean token cross-entropy), every predicted token once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.config import EvalConfig, MaskDraw, TestWeights
from rnnreg.data import windows
from rnnreg.model import LanguageModel, detach_state
from rnnreg.regularizers.masks import HeldMasks, MCDropout
from rnnreg.testhooks import pause_point


@dataclass(frozen=True)
class Evaluation:
    nll_sum: float
    tokens: int

    @property
    def loss(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


@torch.no_grad()
def evaluate(model: LanguageModel, source: torch.Tensor, bptt: int) -> Evaluation:
    """Standard evaluation (every mask off) of the (T, B) ``source``.

    PPL = exp( (1/N) Σ_t Σ_b -log p(w_{t+1,b} | w_{≤t,b}) ), the hidden state carried
    across windows from a zero state, N = (T - 1) B.
    """
    was_training = model.training
    model.eval()
    try:
        state = model.init_state(source.size(1))
        nll_sum = 0.0
        tokens = 0
        for _, inputs, targets in windows(source, bptt):
            logits, state = model(inputs, state)
            state = detach_state(state)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            )
            nll_sum += nll.item()
            tokens += targets.numel()
    finally:
        model.train(was_training)
    return Evaluation(nll_sum, tokens)


@torch.no_grad()
def evaluate_mc(
    model: LanguageModel,
    source: torch.Tensor,
    bptt: int,
    samples: int,
    replicas_per_pass: int = 0,
    *,
    hold_masks: bool = False,
    embedding_dropout: bool = True,
) -> Evaluation:
    """MC-dropout evaluation (Gal & Ghahramani): masks on, probabilities averaged.

        p̄(w_{t+1}) = (1/K) Σ_{k=1..K} p_k(w_{t+1} | w_{≤t}),   PPL = exp(-(1/N) Σ log p̄)

    Each sample k is the stochastic network run over the whole split with its own hidden
    state and its own masks. The K samples run as one batched pass: the batch is
    replicated K times (replica-major columns) with independent masks per copy;
    ``replicas_per_pass`` > 0 caps the copies per pass to bound memory.

    ``hold_masks`` keeps each sample's time-constant masks for its whole pass over the
    split instead of drawing them at every window (``eval.mc_mask_draw=stream``);
    ``embedding_dropout=False`` turns the word-type mask off (both as Gal's
    ``run_MC_test``).
    """
    if samples < 1:
        raise ValueError(f"MC dropout needs at least one sample, got {samples}")
    per_pass = samples if replicas_per_pass <= 0 else min(replicas_per_pass, samples)
    steps, batch = source.size(0) - 1, source.size(1)
    prob_sum = torch.zeros(steps, batch, dtype=torch.float64, device=source.device)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, samples, per_pass):
            replicas = min(per_pass, samples - first)
            held = HeldMasks() if hold_masks else None  # a new sample: new masks
            mc = MCDropout(replicas, held, embedding_dropout)
            state = model.init_state(replicas * batch)
            for index, inputs, targets in windows(source, bptt):
                logits, state = model(inputs.repeat(1, replicas), state, mc=mc)
                state = detach_state(state)
                wanted = targets.repeat(1, replicas).unsqueeze(-1)
                log_p = logits.gather(-1, wanted).squeeze(-1) - torch.logsumexp(logits, -1)
                p = log_p.double().exp().view(targets.size(0), replicas, batch).sum(1)
                start = index * bptt
                prob_sum[start : start + targets.size(0)] += p
    finally:
        model.train(was_training)
    nll_sum = -torch.log(prob_sum / samples).sum().item()
    return Evaluation(nll_sum, steps * batch)


def final_evaluation(
    model: LanguageModel,
    final_weights: dict[str, torch.Tensor],
    best_weights: dict[str, torch.Tensor] | None,
    valid: torch.Tensor,
    test: torch.Tensor,
    e: EvalConfig,
) -> dict[str, float]:
    """Test perplexity of the final and of the best-validation weights; ``test_ppl`` (and
    MC dropout, with ``eval.mc_samples``) uses those of ``eval.test_weights``, which stay
    loaded in ``model`` afterwards.

    ``final``: the weights after the last step (averaged under NT-ASGD), as Zaremba's and
    Gal's Lua code test them; ``best``: the best validation epoch's (AWD-LSTM). Without a
    best checkpoint (no validation was ever better than inf) the final weights are the best.
    """
    model.load_state_dict(final_weights)
    results = {"test_ppl_final": evaluate(model, test, e.bptt).perplexity}
    pause_point("test")  # in the final evaluation
    if best_weights is not None:
        model.load_state_dict(best_weights)
        results["test_ppl_best"] = evaluate(model, test, e.bptt).perplexity
    else:
        results["test_ppl_best"] = results["test_ppl_final"]
    if e.test_weights is TestWeights.final:
        model.load_state_dict(final_weights)
    results["test_ppl"] = results[f"test_ppl_{e.test_weights.value}"]
    if e.mc_samples > 0:
        for split, source in (("val", valid), ("test", test)):
            mc = evaluate_mc(
                model,
                source,
                e.bptt,
                e.mc_samples,
                e.mc_replicas_per_pass,
                hold_masks=e.mc_mask_draw is MaskDraw.stream,
                embedding_dropout=e.mc_embedding_dropout,
            )
            results[f"{split}_ppl_mc"] = mc.perplexity
    return results
