"""Perplexity of a split: exp(mean token cross-entropy), every predicted token once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.evaluation.uncertainty import UncertaintyMeter
from rnnreg.model.lm import LanguageModel
from rnnreg.model.stream import Stream, evaluating


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
def evaluate(
    model: LanguageModel,
    source: torch.Tensor,
    bptt: int,
    meter: UncertaintyMeter | None = None,
) -> Evaluation:
    """Standard evaluation (every mask off) of the (T, B) ``source``.

    PPL = exp( (1/N) Σ_t Σ_b -log p(w_{t+1,b} | w_{≤t,b}) ), the hidden state carried
    across windows from a zero state, N = (T - 1) B. The sum stays on the device (in
    fp64) and is read once, at the end of the split. ``meter`` also gathers the
    calibration of p = softmax(logits) (:mod:`rnnreg.evaluation.uncertainty`).
    """
    nll_sum = torch.zeros((), dtype=torch.float64, device=source.device)
    tokens = 0
    with evaluating(model):
        stream = Stream(model, source, bptt)
        for _, inputs, targets in stream:
            logits = stream.forward(inputs)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            )
            nll_sum += nll.double()
            if meter is not None:
                meter.add(torch.softmax(logits.float(), -1), targets)
            tokens += targets.numel()
    return Evaluation(nll_sum.item(), tokens)
