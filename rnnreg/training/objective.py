"""Objectives over two passes of the same window: fraternal dropout, expectation-linear
dropout and the Π-model (docs/protocols.md, "Objectives"):

    s¹ = f(x; z¹, state)      pass 1, training mode: its final state is carried on
    s² = f(x; z², state)      pass 2 from the same state: fresh masks z² (fd, pi), or
                              evaluation mode, no masks (eld); gradients flow through both
    P  = κ · mean over (t, b, v) of (s¹ − s²)²          on the pre-softmax scores

    fd : ½ (CE(s¹) + CE(s²)) + P          (Zolna et al. 2018; κ = 0.15)
    eld: CE(s¹) + P                       (Ma et al. 2017; κ = 0.25)
    pi : CE(s¹) + P                       (the Π-model; κ = 0.15)

The authors' code, ``kondiz/fraternal-dropout`` ``main.py`` (the ``kappa`` block of
``train()``), decides what the papers leave open: pass 2 redraws every mask, and AR/TAR
act on pass 1 only (rnnreg/training/loss.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from rnnreg.config.schema import Objective, ObjectiveConfig
from rnnreg.model.lm import LanguageModel, State


class ObjectiveTerms(NamedTuple):
    """The data term (token-mean cross-entropies, as combined) and the penalty P."""

    data: torch.Tensor
    penalty: torch.Tensor


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of (T, B, V) scores against (T, B) targets."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def second_pass(
    model: LanguageModel, inputs: torch.Tensor, state: State, objective: ObjectiveConfig
) -> torch.Tensor:
    """Pass 2's scores s² from the same carried ``state``: fresh masks, or none (eld)."""
    if objective.name is not Objective.eld:
        return model(inputs, state)[0]
    model.eval()
    try:
        return model(inputs, state)[0]
    finally:
        model.train()


def objective_terms(
    model: LanguageModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    state: State,
    objective: ObjectiveConfig,
    logits: torch.Tensor,
    nll: torch.Tensor,
) -> ObjectiveTerms:
    """The two-pass objective's terms, given pass 1's scores ``logits`` and their NLL."""
    other = second_pass(model, inputs, state, objective)
    penalty = objective.kappa * (logits - other).pow(2).mean()
    data = 0.5 * (nll + cross_entropy(other, targets)) if objective.name is Objective.fd else nll
    return ObjectiveTerms(data, penalty)
