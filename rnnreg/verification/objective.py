"""``rnnreg verify`` for a two-pass objective (``objective=fd|eld|pi``), on a tiny model
with the run's variant, in float64 (rnnreg/training/objective.py):

* **objective terms**: the window's loss against a direct computation, L · (data + κ ·
  Σ(s¹ − s²)² / (T·B·V)) + AR + TAR, with the cross-entropy written out;
* **objective state**: the state carried to the next window is pass 1's;
* **objective κ = 0**: ``pi`` with κ = 0 has the plain step's loss and gradients;
* **objective gradient**: ``torch.autograd.gradcheck`` of the two-pass loss in every
  parameter, each pass's masks fixed by the seed.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rnnreg.config.schema import Cell, ModelConfig, Objective, ObjectiveConfig, VariantConfig
from rnnreg.model.lm import LanguageModel
from rnnreg.training.loss import WindowLoss, window_loss
from rnnreg.verification.checks import Check

VOCAB = 9


def _tiny(variant: VariantConfig, cell: Cell = Cell.lstm) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(name="tiny", embedding_size=4, hidden_size=4, compile=False, cell=cell)
    return LanguageModel(VOCAB, config, variant).double().train()


def _window() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(VOCAB, (6, 2), generator=torch.Generator().manual_seed(1))
    return tokens[:-1], tokens[1:]


def _loss(model: LanguageModel, variant: VariantConfig, objective: ObjectiveConfig) -> WindowLoss:
    inputs, targets = _window()
    torch.manual_seed(5)
    return window_loss(model, inputs, targets, model.init_state(2), variant, True, objective)


def _direct_ce(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_p = scores - scores.exp().sum(-1, keepdim=True).log()
    return -log_p.gather(-1, targets.unsqueeze(-1)).mean()


def terms_and_state(
    variant: VariantConfig, objective: ObjectiveConfig, cell: Cell = Cell.lstm
) -> list[Check]:
    """The loss against its direct computation, and the carried state against pass 1's."""
    model = _tiny(variant, cell)
    inputs, targets = _window()
    with torch.no_grad():
        w = _loss(model, variant, objective)
        torch.manual_seed(5)  # the same draws, in the same order: pass 1, then pass 2
        first, state_1 = model(inputs, model.init_state(2))
        if objective.name is Objective.eld:
            model.eval()
        second, _ = model(inputs, model.init_state(2))
        model.train()
    penalty = objective.kappa * ((first - second) ** 2).sum() / first.numel()
    ce = _direct_ce(first, targets)
    data = (ce + _direct_ce(second, targets)) / 2 if objective.name is Objective.fd else ce
    extra = 0.0 if w.penalties is None else w.penalties.sum()
    want = inputs.size(0) * (data + penalty) + extra
    gap = abs(w.loss.item() - want.item()) / abs(want.item())
    state_gap = max(
        (a - b).abs().max().item() if a.numel() else 0.0  # a GRU's c is empty
        for pair, pair_1 in zip(w.state, state_1, strict=True)
        for a, b in zip(pair, pair_1, strict=True)
    )
    return [
        Check(
            "objective terms",
            gap <= 1e-12,
            f"{objective.name.value}, κ {objective.kappa}: loss vs direct, relative "
            f"{gap:.1e} (≤ 1e-12); penalty {penalty.item():.3e}",
        ),
        Check(
            "objective state",
            state_gap == 0.0,
            f"carried state vs pass 1's: max abs diff {state_gap:.1e}",
        ),
    ]


def kappa_zero(variant: VariantConfig, cell: Cell = Cell.lstm) -> Check:
    """``pi`` with κ = 0 against the plain step: loss and every gradient."""
    model = _tiny(variant, cell)
    results = []
    for objective in (ObjectiveConfig(), ObjectiveConfig(name=Objective.pi, kappa=0.0)):
        model.zero_grad()
        w = _loss(model, variant, objective)
        w.loss.backward()
        results.append([w.loss.detach(), *(p.grad.clone() for p in model.parameters())])
    worst = max((a - b).abs().max().item() for a, b in zip(*results, strict=True))
    return Check(
        "objective κ = 0",
        worst == 0.0,
        f"pi, κ 0 vs the plain step: loss and gradients, max abs diff {worst:.1e}",
    )


def gradient(variant: VariantConfig, objective: ObjectiveConfig, cell: Cell = Cell.lstm) -> Check:
    """gradcheck of the two-pass loss in every parameter (float64)."""
    model = _tiny(variant, cell)
    params = tuple(model.parameters())
    kappa = replace(objective, kappa=objective.kappa or 0.5)
    try:
        ok = torch.autograd.gradcheck(
            lambda *_: _loss(model, variant, kappa).loss, params, atol=1e-6
        )
        detail = f"gradcheck float64 of the two-pass loss, {len(params)} parameters"
    except RuntimeError as exc:
        ok, detail = False, str(exc).strip().splitlines()[0][:160]
    return Check("objective gradient", bool(ok), detail)


def objective_checks(
    variant: VariantConfig, objective: ObjectiveConfig, cell: Cell = Cell.lstm
) -> list[Check]:
    """Every objective check, in table order (none when the objective is one pass), on a
    model of ``cell``."""
    if not objective.two_pass:
        return []
    return [
        *terms_and_state(variant, objective, cell),
        kappa_zero(variant, cell),
        gradient(variant, objective, cell),
    ]
