"""How far a model's predicted probabilities can be trusted: calibration, and whether its
uncertainty tells its errors apart (``eval.uncertainty=true``; docs/evaluation.md).

For each scored token t with target y_t and predictive distribution p_t over the V words
(softmax of the logits; under MC dropout p̄_t = (1/K) Σ_k p_{t,k}), with N tokens:

    accuracy   = (1/N) Σ_t 1[argmax p_t = y_t]
    Brier      = (1/N) Σ_t Σ_v (p_{t,v} − 1[v = y_t])²
    ECE        = Σ_b (n_b / N) |acc_b − conf_b|   over 15 equal-width bins of conf_t = max p_t
    H[p̄]       predictive entropy;  E_k H[p_k]  expected entropy;  MI = H[p̄] − E_k H[p_k]
    AUROC      of a score (1 − max p, H[p̄], MI) ranking the errors above the correct tokens.

Every split is accumulated window by window as a few numbers per token (never a tensor
of the vocabulary per token), and read once at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Top-label calibration bins (Guo et al., 2017), equal width on [0, 1].
BINS = 15

#: The metrics of a standard evaluation, and those MC dropout adds (summary.json keys are
#: ``{split}_{metric}`` and ``{split}_{metric}_mc``).
METRICS = ("acc", "brier", "ece", "entropy", "auroc_maxprob", "auroc_entropy")
MC_METRICS = (*METRICS, "expected_entropy", "mi", "auroc_mi")


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H[p] = −Σ_v p_v log p_v over the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


def brier(p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_v (p_v − 1[v = y])² = Σ_v p_v² − 2 p_y + 1, per token."""
    p_target = p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (p * p).sum(-1) - 2 * p_target + 1


def reliability(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS
) -> dict[str, list[float]]:
    """Per equal-width bin b of confidence: n_b, conf_b = mean confidence, acc_b = mean
    correctness (0 where n_b = 0). Bin b holds (b/B, (b+1)/B], 0 in the first."""
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).double()
    conf = torch.bincount(index, weights=confidence.double(), minlength=bins)
    acc = torch.bincount(index, weights=correct.double(), minlength=bins)
    safe = count.clamp(min=1)
    return {
        "count": count.tolist(),
        "confidence": (conf / safe).tolist(),
        "accuracy": (acc / safe).tolist(),
    }


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS
) -> float:
    """ECE = Σ_b (n_b / N) |acc_b − conf_b| (top label, equal-width bins)."""
    r = reliability(confidence, correct, bins)
    total = sum(r["count"]) or 1.0
    pairs = zip(r["count"], r["accuracy"], r["confidence"], strict=True)
    return sum(n / total * abs(acc - conf) for n, acc, conf in pairs)


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positives`` (the errors): the
    probability that a random positive scores above a random negative, ties counting ½,

        AUROC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋),   R₊ the sum of the positives' mid-ranks.

    None when one class is empty."""
    scores, positives = scores.double().flatten(), positives.bool().flatten()
    n_pos = int(positives.sum())
    n_neg = positives.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ordered, order = scores.sort()
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid_ranks = ends - (counts.double() - 1) / 2  # 1-based mid-rank of each tie block
    ranks = torch.empty_like(scores)
    ranks[order] = mid_ranks[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class UncertaintyMeter:
    """The per-token numbers of one split's evaluation, kept on the device: confidence,
    correctness, Brier term, predictive entropy, and with MC samples the expected entropy."""

    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self.parts.setdefault(name, []).append(value.detach().flatten().float())

    def add(
        self, p: torch.Tensor, targets: torch.Tensor, expected_entropy: torch.Tensor | None = None
    ) -> None:
        """One window: ``p`` (…, V) the predictive distribution of each token, ``targets``
        (…) the words, ``expected_entropy`` (…) E_k H[p_k] under MC dropout."""
        confidence, predicted = p.max(-1)
        self._keep("confidence", confidence)
        self._keep("correct", predicted == targets)
        self._keep("brier", brier(p, targets))
        self._keep("entropy", entropy(p))
        if expected_entropy is not None:
            self._keep("expected_entropy", expected_entropy)

    def tokens(self) -> dict[str, torch.Tensor]:
        """The split's per-token numbers, on the CPU; with MC samples also
        ``mi`` = H[p̄] − E_k H[p_k]."""
        t = {name: torch.cat(values).cpu() for name, values in self.parts.items()}
        if "expected_entropy" in t:
            t["mi"] = (t["entropy"] - t["expected_entropy"]).clamp(min=0)  # ≥ 0 but rounding
        return t

    def results(self) -> tuple[dict[str, float | None], dict[str, list[float]]]:
        """The split's metrics (keys as in summary.json, before the split's prefix) and its
        reliability bins."""
        t = self.tokens()
        errors = t["correct"] == 0
        out: dict[str, float | None] = {
            "acc": float(t["correct"].mean()),
            "brier": float(t["brier"].double().mean()),
            "ece": expected_calibration_error(t["confidence"], t["correct"]),
            "entropy": float(t["entropy"].double().mean()),
            "auroc_maxprob": auroc(-t["confidence"], errors),
            "auroc_entropy": auroc(t["entropy"], errors),
        }
        if "mi" in t:
            out["expected_entropy"] = float(t["expected_entropy"].double().mean())
            out["mi"] = float(t["mi"].double().mean())
            out["auroc_mi"] = auroc(t["mi"], errors)
        return out, reliability(t["confidence"], t["correct"])
