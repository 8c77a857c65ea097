"""The training loss of one BPTT window: the papers' convention, plus AR and TAR.

    loss = Σ_{t=1..L} (1/B) Σ_b -log p(w_{t+1,b} | w_{≤t,b})  (= L · token-mean NLL)
           + AR + TAR                           (rnnreg/model/regularizers/activations.py)

With ``optim.loss_sum_over_time=false`` the first term is the token mean itself. A
two-pass objective (``objective=fd|eld|pi``, rnnreg/training/objective.py) replaces the
token-mean NLL by its data term plus its penalty, L · (data + P) under the papers'
convention [assumed: the authors' code takes the token mean, where L · (…) only rescales
the learning rate]; AR and TAR stay on pass 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnreg.config.schema import ObjectiveConfig, VariantConfig
from rnnreg.model.lm import Activations, LanguageModel, State
from rnnreg.model.regularizers.activations import activation_regularization
from rnnreg.training.objective import cross_entropy, objective_terms


@dataclass
class WindowLoss:
    loss: torch.Tensor  # what is backpropagated
    nll: torch.Tensor  # token-mean NLL of the window
    penalties: torch.Tensor | None  # (AR, TAR), detached; None without them
    state: State  # the state after the window (still attached to the graph)


def window_loss(
    model: LanguageModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    state: State,
    variant: VariantConfig,
    sum_over_time: bool,
    objective: ObjectiveConfig | None = None,
) -> WindowLoss:
    """Forward the (L, B) window ``inputs`` from ``state`` and score it on ``targets``."""
    regularize = variant.ar_alpha > 0 or variant.tar_beta > 0
    activations = Activations() if regularize else None
    logits, new_state = model(inputs, state, activations)
    nll = cross_entropy(logits, targets)
    total = nll
    if objective is not None and objective.two_pass:
        terms = objective_terms(model, inputs, targets, state, objective, logits, nll)
        total = terms.data + terms.penalty
    loss = total * inputs.size(0) if sum_over_time else total
    penalties = None
    if activations is not None:
        assert activations.last is not None and activations.last_dropped is not None
        ar, tar = activation_regularization(
            activations.last, activations.last_dropped, variant.ar_alpha, variant.tar_beta
        )
        loss = loss + ar + tar
        penalties = torch.stack([ar, tar]).detach()
    return WindowLoss(loss, nll, penalties, new_state)
