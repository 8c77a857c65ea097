"""Perplexity of a split: exp(mean token cross-entropy), every predicted token once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.data import windows
from rnnreg.model import LanguageModel, detach_state


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
