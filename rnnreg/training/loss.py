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
from rnnreg.core.runtime import constant
from rnnreg.model.lm import Activations, LanguageModel, State
from rnnreg.model.regularizers.activations import activation_regularization
from rnnreg.training.objective import cross_entropy, objective_terms


@dataclass
class WindowLoss:
    """The window's loss as its terms: loss = scale · total + AR + TAR.

    :meth:`backward` seeds autograd with ``scale`` instead of multiplying by it, so the
    step has no forward product, no ``ones_like`` seed and no product in the backward, with
    the same gradients to the bit: the product's backward multiplied 1 by ``scale``.
    """

    total: torch.Tensor  # token-mean NLL, or a two-pass objective's data + penalty
    scale: float  # L under the papers' convention, else 1
    nll: torch.Tensor  # token-mean NLL of the window
    regularizers: tuple[torch.Tensor, ...]  # (AR, TAR), attached; () without them
    state: State  # the state after the window (still attached to the graph)

    @property
    def loss(self) -> torch.Tensor:
        """The loss as one tensor (for checks; the step calls :meth:`backward`)."""
        loss = self.total * self.scale if self.scale != 1.0 else self.total
        return sum(self.regularizers, loss)

    @property
    def penalties(self) -> torch.Tensor | None:
        """(AR, TAR), detached; None without them."""
        return torch.stack(self.regularizers).detach() if self.regularizers else None

    def backward(self) -> None:
        """∇ loss into the parameters' ``.grad``, seeding ``total`` with ``scale``."""
        attached = [r for r in self.regularizers if r.requires_grad]
        seeds = [constant(self.scale, self.total)] + [constant(1.0, r) for r in attached]
        torch.autograd.backward([self.total, *attached], seeds)


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
    scale = float(inputs.size(0)) if sum_over_time else 1.0
    regularizers: tuple[torch.Tensor, ...] = ()
    if activations is not None:
        assert activations.last is not None and activations.last_dropped is not None
        regularizers = activation_regularization(
            activations.last, activations.last_dropped, variant.ar_alpha, variant.tar_beta
        )
    return WindowLoss(total, scale, nll, regularizers, new_state)
