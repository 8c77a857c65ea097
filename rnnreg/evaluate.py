"""Perplexity of a split: exp(mean token cross-entropy), every predicted token once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.data import windows
from rnnreg.model import LanguageModel, detach_state
from rnnreg.regularizers.masks import HeldMasks, MCDropout


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
    across windows from a zero state, N = (T - 1) B. The sum stays on the device (in
    fp64) and is read once, at the end of the split.
    """
    was_training = model.training
    model.eval()
    try:
        state = model.init_state(source.size(1))
        nll_sum = torch.zeros((), dtype=torch.float64, device=source.device)
        tokens = 0
        for _, inputs, targets in windows(source, bptt):
            logits, state = model(inputs, state)
            state = detach_state(state)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            )
            nll_sum += nll.double()
            tokens += targets.numel()
    finally:
        model.train(was_training)
    return Evaluation(nll_sum.item(), tokens)


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
