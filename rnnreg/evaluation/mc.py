"""MC-dropout evaluation (Gal & Ghahramani): the training masks on, predicted probabilities
averaged over K samples run as one batched pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnreg.data.batching import windows
from rnnreg.evaluation.perplexity import Evaluation
from rnnreg.evaluation.uncertainty import UncertaintyMeter, entropy
from rnnreg.model.lm import LanguageModel
from rnnreg.model.regularizers.masks import HeldMasks, MCDropout
from rnnreg.model.stream import Stream, evaluating

#: Memory a pass of replicas may hold for its logits and their softmax (fp32), when
#: ``eval.mc_replicas_per_pass`` is 0: the replicas per pass follow from it.
MC_PASS_BYTES = 512 * 2**20


def pass_size(samples: int, requested: int, rows: int, bptt: int, vocab: int) -> int:
    """The MC replicas run side by side: ``requested`` (> 0), or as many as keep one
    window's logits, log-softmax, softmax and entropy terms in fp32 under :data:`MC_PASS_BYTES`."""
    if requested > 0:
        return min(requested, samples)
    per_replica = 4 * 4 * bptt * rows * vocab
    return max(1, min(samples, MC_PASS_BYTES // per_replica))


@dataclass
class _Pass:
    """One pass of ``replicas`` samples: its own masks and its own carried state."""

    replicas: int
    mc: MCDropout
    stream: Stream


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
    meter: UncertaintyMeter | None = None,
) -> Evaluation:
    """MC-dropout evaluation (Gal & Ghahramani): masks on, probabilities averaged.

        p̄(w_{t+1}) = (1/K) Σ_{k=1..K} p_k(w_{t+1} | w_{≤t}),   PPL = exp(-(1/N) Σ log p̄)

    Each sample k is the stochastic network run over the whole split with its own hidden
    state and its own masks. Samples run in batched passes: the batch replicated R times
    (replica-major columns) with independent masks per copy, R from
    :func:`pass_size`. The split is read window by window, each pass carrying its
    own state, so what is held does not grow with K: one pass's logits and, for
    ``meter``, the window's p̄ (T_w, B, V) with Σ_k H[p_k] (T_w, B). With one pass this is
    the order of a single batched pass over the split.

    ``hold_masks`` keeps each sample's time-constant masks for its whole pass over the
    split instead of drawing them at every window (``eval.mc_mask_draw=stream``): kept as
    the generators' states they were drawn from and drawn again at every window
    (:class:`~rnnreg.model.regularizers.masks.HeldMasks`), so that this too holds no more
    than a window's masks at once, whatever K;
    ``embedding_dropout=False`` turns the word-type mask off (both as Gal's
    ``run_MC_test``).
    """
    if samples < 1:
        raise ValueError(f"MC dropout needs at least one sample, got {samples}")
    batch = source.size(1)
    per_pass = pass_size(samples, replicas_per_pass, batch, bptt, model.vocab_size)
    nll_sum = torch.zeros((), dtype=torch.float64, device=source.device)
    with evaluating(model):
        passes = [
            _Pass(
                r,
                MCDropout(r, HeldMasks() if hold_masks else None, embedding_dropout),
                Stream(model, source, bptt, rows=r * batch),
            )
            for r in (min(per_pass, samples - first) for first in range(0, samples, per_pass))
        ]
        for _, inputs, targets in windows(source, bptt):
            p_target = torch.zeros(targets.shape, dtype=torch.float64, device=source.device)
            p_mean = expected_entropy = None
            for one in passes:
                logits = one.stream.forward(inputs.repeat(1, one.replicas), mc=one.mc)
                log_p = torch.log_softmax(logits.float(), -1).view(
                    *targets.shape[:1], one.replicas, batch, -1
                )
                wanted = targets.unsqueeze(1).unsqueeze(-1).expand(-1, one.replicas, -1, 1)
                p_target += log_p.gather(-1, wanted).squeeze(-1).double().exp().sum(1)
                if meter is not None:
                    p = log_p.exp()
                    p_mean = p.sum(1) if p_mean is None else p_mean + p.sum(1)
                    h = entropy(p).sum(1)
                    expected_entropy = h if expected_entropy is None else expected_entropy + h
            nll_sum -= torch.log(p_target / samples).sum()
            if meter is not None:
                meter.add(p_mean / samples, targets, expected_entropy / samples)
    return Evaluation(nll_sum.item(), (source.size(0) - 1) * batch)
