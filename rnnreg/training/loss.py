"""The training loss of one BPTT window: the papers' convention, plus AR and TAR.

    loss = Σ_{t=1..L} (1/B) Σ_b -log p(w_{t+1,b} | w_{≤t,b})  (= L · token-mean NLL)
           + AR + TAR                           (rnnreg/model/regularizers/activations.py)

With ``optim.loss_sum_over_time=false`` the first term is the token mean itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnreg.config.schema import VariantConfig
from rnnreg.model.lm import Activations, LanguageModel, State
from rnnreg.model.regularizers.activations import activation_regularization


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
) -> WindowLoss:
    """Forward the (L, B) window ``inputs`` from ``state`` and score it on ``targets``."""
    regularize = variant.ar_alpha > 0 or variant.tar_beta > 0
    activations = Activations() if regularize else None
    logits, new_state = model(inputs, state, activations)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    loss = nll * inputs.size(0) if sum_over_time else nll
    penalties = None
    if activations is not None:
        assert activations.last is not None and activations.last_dropped is not None
        ar, tar = activation_regularization(
            activations.last, activations.last_dropped, variant.ar_alpha, variant.tar_beta
        )
        loss = loss + ar + tar
        penalties = torch.stack([ar, tar]).detach()
    return WindowLoss(loss, nll, penalties, new_state)
