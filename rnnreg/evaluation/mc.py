"""MC-dropout evaluation (Gal & Ghahramani): the training masks on, predicted probabilities
averaged over K samples run as one batched pass."""

from __future__ import annotations

import torch

from rnnreg.evaluation.perplexity import Evaluation
from rnnreg.model.lm import LanguageModel
from rnnreg.model.regularizers.masks import HeldMasks, MCDropout
from rnnreg.model.stream import Stream, evaluating


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
    with evaluating(model):
        for first in range(0, samples, per_pass):
            replicas = min(per_pass, samples - first)
            held = HeldMasks() if hold_masks else None  # a new sample: new masks
            mc = MCDropout(replicas, held, embedding_dropout)
            stream = Stream(model, source, bptt, rows=replicas * batch)
            for index, inputs, targets in stream:
                logits = stream.forward(inputs.repeat(1, replicas), mc=mc)
                wanted = targets.repeat(1, replicas).unsqueeze(-1)
                log_p = logits.gather(-1, wanted).squeeze(-1) - torch.logsumexp(logits, -1)
                p = log_p.double().exp().view(targets.size(0), replicas, batch).sum(1)
                start = index * bptt
                prob_sum[start : start + targets.size(0)] += p
    nll_sum = -torch.log(prob_sum / samples).sum().item()
    return Evaluation(nll_sum, steps * batch)
