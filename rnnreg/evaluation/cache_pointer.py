"""The continuous cache pointer (Grave, Joulin, Usunier 2017), over any trained model.

At each position t of a stream (batch 1), with h_t the last LSTM layer's output, the
cache holds the pairs (h_i, w_{i+1}) of the ``window`` positions before t, never t:

    p_cache(w) = Σ_{i in [t-window, t-1], w_{i+1} = w} exp(θ s(h_t, h_i)) / Σ_i exp(θ s(h_t, h_i))
    p(w)       = (1 − λ) p_vocab(w) + λ p_cache(w)

with s the dot product (the paper), or the cosine similarity (``similarity=cosine``,
AWD-LSTM's ``pointer.py``). Where the cache is still empty (t = 1) p = p_vocab. Only the
probability of the next word is needed, so p_cache(w_{t+1}) is the attention mass on the
cached positions whose next word is w_{t+1}: every window of the stream is one batched
product against the cache, no loop over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.evaluation.perplexity import Evaluation
from rnnreg.model.lm import Activations, LanguageModel
from rnnreg.model.stream import Stream, evaluating


@dataclass
class CacheScores:
    """Per predicted token of a stream: p_vocab(w_{t+1}), and p_cache(w_{t+1}) per θ."""

    p_vocab: torch.Tensor  # (N,) float64
    p_cache: dict[float, torch.Tensor]  # θ -> (N,) float64
    has_cache: torch.Tensor  # (N,) bool: False where the cache was empty

    def evaluation(self, theta: float, interpolation: float) -> Evaluation:
        """The perplexity of the mixture at (θ, λ)."""
        mixed = (1 - interpolation) * self.p_vocab + interpolation * self.p_cache[theta]
        p = torch.where(self.has_cache, mixed, self.p_vocab)
        return Evaluation(-torch.log(p).sum().item(), p.numel())


def _similarity(queries: torch.Tensor, keys: torch.Tensor, similarity: str) -> torch.Tensor:
    if similarity == "cosine":
        queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
    return queries @ keys.t()


@torch.no_grad()
def cache_scores(
    model: LanguageModel,
    source: torch.Tensor,
    bptt: int,
    window: int,
    thetas: list[float],
    similarity: str = "dot",
    full_window: bool = False,
) -> CacheScores:
    """Run ``model`` (evaluation mode) over the (T, 1) stream ``source`` and score every
    next word with the vocabulary and with the cache, for each θ in ``thetas``.

    The cache is mixed in from the first position that has one (Grave et al.), or, with
    ``full_window``, only once it holds ``window`` positions (AWD-LSTM's ``pointer.py``,
    which starts one position later still: ``t > window``)."""
    if source.size(1) != 1:
        raise ValueError("the cache pointer evaluates one stream: batch size 1")
    if window < 1:
        raise ValueError(f"the cache window must hold at least one position, got {window}")
    p_vocab, p_cache = [], {theta: [] for theta in thetas}
    has_cache = []
    keys = source.new_zeros((0, 0), dtype=torch.float32)  # h_i of the cached positions
    next_words = source.new_zeros(0)  # w_{i+1} of the cached positions
    seen = 0  # positions scored so far (global index of the window's first position)
    with evaluating(model):
        stream = Stream(model, source, bptt)
        for _, inputs, targets in stream:
            activations = Activations()
            logits = stream.forward(inputs, activations=activations)
            assert activations.last is not None
            hidden = activations.last[:, 0].float()  # (L, H)
            target = targets[:, 0]  # (L,)
            log_p = torch.log_softmax(logits[:, 0].double(), -1)
            p_vocab.append(log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp())
            length = target.numel()
            keys = hidden if keys.numel() == 0 else torch.cat((keys, hidden))
            next_words = torch.cat((next_words, target))
            first_key = seen + length - keys.size(0)  # global index of keys[0]
            query_pos = seen + torch.arange(length, device=source.device)  # t
            key_pos = first_key + torch.arange(keys.size(0), device=source.device)  # i
            # the cache of t: t - window <= i <= t - 1 (never t itself)
            valid = (key_pos.unsqueeze(0) < query_pos.unsqueeze(1)) & (
                key_pos.unsqueeze(0) >= query_pos.unsqueeze(1) - window
            )
            match = next_words.unsqueeze(0) == target.unsqueeze(1)  # w_{i+1} = w_{t+1}
            scores = _similarity(hidden, keys, similarity).double()
            has_cache.append(valid.sum(1) >= (window if full_window else 1))
            for theta in thetas:
                attention = torch.softmax(
                    (theta * scores).masked_fill(~valid, -torch.inf), dim=1
                ).nan_to_num(0.0)  # an empty cache: no attention
                p_cache[theta].append((attention * match).sum(1))
            seen += length
            keys, next_words = keys[-window:], next_words[-window:]
    return CacheScores(
        torch.cat(p_vocab),
        {theta: torch.cat(parts) for theta, parts in p_cache.items()},
        torch.cat(has_cache),
    )


def evaluate_cache(
    model: LanguageModel,
    source: torch.Tensor,
    bptt: int,
    window: int,
    theta: float,
    interpolation: float,
    similarity: str = "dot",
    full_window: bool = False,
) -> Evaluation:
    """Perplexity of ``source`` with the cache pointer at (window, θ, λ)."""
    scores = cache_scores(model, source, bptt, window, [theta], similarity, full_window)
    return scores.evaluation(theta, interpolation)
