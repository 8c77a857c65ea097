"""Dynamic evaluation (Krause, Kahembwe, Murray, Renals 2018), RMS-normalised, decayed.

Gradient statistics first, on the training data with the trained weights θ₀ (segments of
``segment`` tokens, ``stats_batch_size`` rows, evaluation mode):

    MS_k = sqrt( (1/N_b) Σ_b g_k,b² )                    per parameter entry k
    r_k  = min(MS_k / mean_over_tensors(mean(MS)), 1/λ)  its decay rate

Then the stream is cut into segments s_1, s_2, … of ``segment`` tokens (batch 1, hidden
state carried). Each segment is scored with the current weights *before* the update that
uses it, then the weights move:

    loss_j = mean NLL of s_j under θ_{j-1}                (what is reported)
    θ_j    = θ_{j-1} − η g_j / (MS + ε) + λ r ∘ (θ₀ − θ_{j-1})

The model's own weights are restored afterwards. Defaults and their source: docs/protocols.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnreg.data.batching import batchify
from rnnreg.evaluation.perplexity import Evaluation
from rnnreg.model.lm import LanguageModel
from rnnreg.model.stream import Stream, evaluating


def _segment_loss(stream: Stream, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL of a segment, the state carried on by ``stream``."""
    logits = stream.forward(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def gradient_statistics(
    model: LanguageModel,
    train: torch.Tensor,
    segment: int,
    batch_size: int,
    max_batches: int = 0,
) -> dict[str, torch.Tensor]:
    """MS per parameter (by name) from the 1-D training stream ``train``; ``max_batches``
    > 0 stops after that many segments."""
    data = batchify(train, batch_size).to(next(model.parameters()).device)
    params = dict(model.named_parameters())
    squares = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    with evaluating(model):
        try:
            stream = Stream(model, data, segment)
            for _, inputs, targets in stream:
                model.zero_grad(set_to_none=True)
                _segment_loss(stream, inputs, targets).backward()
                for name, p in params.items():
                    if p.grad is not None:
                        squares[name] += p.grad.detach() ** 2
                count += 1
                if max_batches and count >= max_batches:
                    break
        finally:
            model.zero_grad(set_to_none=True)
    return {name: torch.sqrt(total / count) for name, total in squares.items()}


def _update_factors(
    names: list[str], ms: dict[str, torch.Tensor], lr: float, decay: float, epsilon: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The update's per-entry factors, computed once: −η / (MS + ε) and λ r."""
    scale = torch.stack([m.mean() for m in ms.values()]).mean()
    rates = [(ms[n] / scale).clamp(max=1 / decay) if decay > 0 else ms[n] for n in names]
    return [-lr / (ms[n] + epsilon) for n in names], [decay * r for r in rates]


def evaluate_dynamic(
    model: LanguageModel,
    source: torch.Tensor,
    ms: dict[str, torch.Tensor],
    lr: float,
    decay: float,
    epsilon: float,
    segment: int,
) -> Evaluation:
    """Dynamic evaluation of the (T, 1) stream ``source`` (see the module's equations);
    the sum of the segments' NLL stays on the device and is read once, at the end."""
    if source.size(1) != 1:
        raise ValueError("dynamic evaluation runs on one stream: batch size 1")
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    original = [p.detach().clone() for p in params]
    step_sizes, pulls = _update_factors(names, ms, lr, decay, epsilon)
    nll_sum = torch.zeros((), dtype=torch.float64, device=source.device)
    tokens = 0
    with evaluating(model):
        try:
            stream = Stream(model, source, segment)
            for _, inputs, targets in stream:
                model.zero_grad(set_to_none=False)
                loss = _segment_loss(stream, inputs, targets)
                nll_sum += loss.detach().double() * targets.numel()  # scored before the update
                tokens += targets.numel()
                loss.backward()
                with torch.no_grad():  # both terms from θ_{j-1}, every parameter at once
                    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                    toward = torch._foreach_sub(original, params)
                    torch._foreach_mul_(toward, pulls)
                    torch._foreach_addcmul_(toward, grads, step_sizes)
                    torch._foreach_add_(params, toward)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, original)
            model.zero_grad(set_to_none=True)
    return Evaluation(nll_sum.item(), tokens)
