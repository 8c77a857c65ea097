"""The checks of ``rnnreg verify`` on one variant, at tiny sizes (docs/extending.md).

Each check returns :class:`Check` rows: a name, pass/fail and the figures it measured.
Statistical checks use a stated z-bound, :data:`Z_BOUND` standard errors:

* **gradient**: ``torch.autograd.gradcheck`` in float64 of the layer's generic path as a
  function of every input (x, h_0, c_0, W, U, b), the masks fixed by the seed;
* **fast path**: where the variant has a hand-written or fused path, it equals the
  generic path, forward and backward (float64);
* **masks**: each declared mask's empirical drop rate against its rate; the mean of its
  draws against the value evaluation uses; kept entries exactly 1/(1-p) when scaled,
  else 1; constant over time, rows and gates as its granularity declares;
* **evaluation**: one step from a fixed state and inputs: at the rule's linear point
  (:class:`~rnnreg.model.rule.LinearPoint`) the deterministic evaluation equals the Monte
  Carlo mean of training draws within the z-bound; past the nonlinearity (h_t) the gap
  is printed, never failed (expectation-linear dropout minimises it);
* **state**: a window of 2T in evaluation equals two windows of T with the state carried.

:mod:`rnnreg.verification.runs` adds the composition with ``zaremba`` and ``weight_drop``
and the SIGKILL-and-resume run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rnnreg.config.dropout import Cell, Granularity, LSTMPath
from rnnreg.config.schema import GateMasks, VariantConfig
from rnnreg.model.generic import preactivations
from rnnreg.model.gru import GRULayer, gru_gates, hidden_products
from rnnreg.model.layer import RecurrentLayer
from rnnreg.model.lm import in_step_dropout, plugin_rule
from rnnreg.model.lstm import LSTMLayer
from rnnreg.model.recurrence import activate
from rnnreg.model.regularizers import ActivationDropout
from rnnreg.model.rule import DeclaredMask, LinearPoint, Units

#: Standard errors a statistical check allows (two-sided; with a few hundred entries per
#: check, a correct rule fails one by chance with probability under 1e-4).
Z_BOUND = 5.0

#: The tiny layer: input size, hidden size, steps, rows.
TINY = (3, 4, 5, 2)


@dataclass(frozen=True)
class Check:
    """One row of the table."""

    name: str
    ok: bool
    detail: str


def layer_for(
    variant: VariantConfig,
    path: LSTMPath,
    sizes: tuple[int, int] = TINY[:2],
    index: int = 1,
    cell: Cell = Cell.lstm,
) -> RecurrentLayer:
    """Layer ``index`` of the variant (1: a layer between layers, ``p_between``), float64,
    of the ``cell`` (``model.cell``)."""
    torch.manual_seed(0)
    kind = GRULayer if cell is Cell.gru else LSTMLayer
    layer = kind(*sizes, in_step_dropout(variant, index), path, plugin_rule(variant))
    return layer.double()


def fast_path(layer: RecurrentLayer) -> LSTMPath | None:
    """The variant's path other than the generic one: loop (the LSTM's hand-written
    backward) or fused; a GRU's in-step masks have the generic path only."""
    if layer.plugin:
        return None
    if layer.dropout.needs_loop:
        return LSTMPath.loop if layer.cell == "lstm" else None
    return LSTMPath.fused


def _inputs(
    sizes: tuple[int, int, int, int], seed: int = 1, cell: Cell = Cell.lstm
) -> tuple[torch.Tensor, ...]:
    """x, h0 and c0 (empty for the GRU, which has no memory cell)."""
    n, hidden, steps, rows = sizes
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, rows, n, generator=gen, dtype=torch.float64)
    h0 = 0.5 * torch.randn(1, rows, hidden, generator=gen, dtype=torch.float64)
    c0 = torch.randn(1, rows, 0 if cell is Cell.gru else hidden, generator=gen, dtype=torch.float64)
    return x, h0, c0


def _functional(layer: RecurrentLayer, seed: int) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The layer's training forward as a function of (x, h0, c0, *parameters), its masks
    drawn afresh from ``seed`` at every call (the same masks every time)."""
    names = [name for name, _ in layer.named_parameters()]

    def run(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *params: torch.Tensor):
        torch.manual_seed(seed)
        given = dict(zip(names, params, strict=True))
        out, (h, c) = torch.func.functional_call(layer, given, (x, (h0, c0)))
        return out, h, c

    return run


def gradient_check(variant: VariantConfig, cell: Cell = Cell.lstm) -> Check:
    """gradcheck of the generic path in float64 with respect to every input."""
    layer = layer_for(variant, LSTMPath.generic, cell=cell).train()
    leaves = [t.requires_grad_() for t in _inputs(TINY, cell=cell)]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    try:
        ok = torch.autograd.gradcheck(
            _functional(layer, 3), (*leaves, *params), raise_exception=True
        )
        detail = f"gradcheck float64, {len(leaves) + len(params)} inputs (x, h0, c0, W, U, b)"
    except RuntimeError as exc:
        ok, detail = False, str(exc).strip().splitlines()[0][:160]
    return Check("gradient", bool(ok), detail)


def fast_path_check(variant: VariantConfig, cell: Cell = Cell.lstm) -> Check:
    """The fast path (hand-written backward or fused kernel) against the generic path."""
    generic = layer_for(variant, LSTMPath.generic, cell=cell).train()
    path = fast_path(generic)
    if path is None:
        return Check("fast path", True, "none: this rule runs on the generic path only")
    fast = layer_for(variant, path, cell=cell).train()
    results = []
    for layer in (generic, fast):
        leaves = [t.requires_grad_() for t in _inputs(TINY, cell=cell)]
        params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
        out = _functional(layer, 4)(*leaves, *params)
        gen = torch.Generator().manual_seed(9)
        loss = sum((y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum() for y in out)
        results.append((*out, *torch.autograd.grad(loss, (*leaves, *params))))
    worst = max(_max_abs(a - b) for a, b in zip(*results, strict=True))
    return Check(
        "fast path",
        worst <= 1e-9,
        f"{path.value} vs generic, forward and backward: max abs diff {worst:.1e} (≤ 1e-9)",
    )


def _max_abs(t: torch.Tensor) -> float:
    """max |t|, 0 for an empty tensor (a GRU's c)."""
    return t.abs().max().item() if t.numel() else 0.0


def drawn_masks(layer: RecurrentLayer, steps: int, rows: int) -> dict[str, torch.Tensor | None]:
    """One training draw of every mask the layer applies, by declared name."""
    x = torch.zeros(steps, rows, layer.input_size, dtype=torch.float64)
    masks = layer.draw_masks(steps, rows, x.device, x.dtype)
    drawn = layer.rule_masks(x, masks)
    drawn["weight_hh"] = masks.weight_hh if layer.dropout.p_weight > 0 else drawn.get("weight_hh")
    return drawn


def mask_checks(variant: VariantConfig, cell: Cell = Cell.lstm) -> list[Check]:
    """Every declared mask of a layer, and the activation masks between the layers,
    against its declaration (rate, mean, kept value, constancy), over one draw at
    (T, B, H) = (8, 256, 64)."""
    layer = layer_for(variant, LSTMPath.generic, sizes=(32, 64), cell=cell).train()
    # a rate of 0 turns a mask off: draw_declared gives None, nothing to check
    declared = [m for m in layer.rule.declared() if m.rate > 0 and not _on_weight_columns(layer, m)]
    torch.manual_seed(5)
    drawn = drawn_masks(layer, 8, 256)
    checks = [_one_mask(mask, drawn.get(mask.name), (8, 256)) for mask in declared]
    checks += [
        _one_mask(mask, drop(torch.ones(8, 256, 64, dtype=torch.float64)), (8, 256))
        for mask, drop in activation_masks(variant)
    ]
    return checks or [Check("masks", True, "the variant declares no mask")]


def _on_weight_columns(layer: RecurrentLayer, mask: DeclaredMask) -> bool:
    """A ``batch`` z_h runs as columns of U (and then so does the weight mask): its draw is
    checked by the fast-path comparison, not here."""
    return layer.dropout.hidden_on_weight and mask.name in ("hidden", "weight_hh")


def activation_masks(variant: VariantConfig) -> list[tuple[DeclaredMask, ActivationDropout]]:
    """Zaremba's and the locked masks outside the layers (rnnreg/model/lm.py), each with
    the module that draws it (in training, ``drop(ones)`` is the mask)."""
    untied = variant.gate_masks is GateMasks.untied
    found = []
    for name in ("p_input", "p_between", "p_output"):
        p = getattr(variant, name)
        if p > 0 and not (untied and name != "p_output"):
            mask = DeclaredMask(
                name.removeprefix("p_"), p, variant.activation_granularity, scaled=variant.scale
            )
            found.append((mask, ActivationDropout(p, mask.granularity, variant.scale).train()))
    return found


def _one_mask(mask: DeclaredMask, z: torch.Tensor | None, shape: tuple[int, int]) -> Check:
    name = f"mask {mask.name}"
    if z is None:
        return Check(name, False, f"declared with rate {mask.rate} but not drawn")
    shape_ok, shape_note = _constancy(mask, z, shape)
    z = _independent(mask, z)
    zeros = (z == 0).double()
    n = zeros.numel()
    p = mask.p_zero
    rate_z = abs(zeros.mean().item() - p) / math.sqrt(p * (1 - p) / n)
    kept = z[z != 0]
    kept_ok = bool((kept == torch.tensor(mask.kept_value, dtype=z.dtype).to(z)).all())
    want = mask.evaluation_value
    sd = mask.kept_value * math.sqrt(p * (1 - p))
    mean_z = 0.0 if want is None else abs(z.mean().item() - want) / (sd / math.sqrt(n))
    ok = rate_z <= Z_BOUND and mean_z <= Z_BOUND and kept_ok and shape_ok
    detail = (
        f"P(0) {zeros.mean().item():.4f} vs {p:.4f} ({rate_z:.1f} se); mean vs "
        f"{'mc' if want is None else f'{want:.4f}'} ({mean_z:.1f} se); kept "
        f"{'= ' if kept_ok else '≠ '}{mask.kept_value:.4g}; {shape_note}"
    )
    return Check(name, ok, detail)


def _independent(mask: DeclaredMask, z: torch.Tensor) -> torch.Tensor:
    """The entries of ``z`` drawn independently as declared: one step of a time-constant
    mask, one row of a ``batch`` mask (their repeats are checked by :func:`_constancy`)."""
    if mask.units is Units.weight_hh:
        return z
    if mask.granularity is not Granularity.step:
        z = z[:1]
    if mask.granularity is Granularity.batch:
        z = z[..., :1, :]
    return z


def _constancy(mask: DeclaredMask, z: torch.Tensor, shape: tuple[int, int]) -> tuple[bool, str]:
    """Whether ``z`` varies and stays constant as its granularity and gates declare."""
    if mask.units is Units.weight_hh:
        return True, "weight (gates·H, H)"
    steps, rows = shape
    gated = z.dim() == 4
    if gated != mask.per_gate:
        return False, f"{'a' if gated else 'no'} gate dimension, declared per_gate={mask.per_gate}"
    full = z.expand(steps, *z.shape[1:-2], rows, z.size(-1)) if z.size(-2) == 1 else z
    full = full.expand(steps, *full.shape[1:]) if full.size(0) == 1 else full
    over_time = bool((full != full[:1]).any())
    over_rows = bool((full != full[..., :1, :]).any())
    want_time = mask.granularity is Granularity.step
    want_rows = mask.granularity is not Granularity.batch
    note = f"{mask.granularity.value}: varies over time {over_time}, rows {over_rows}"
    ok = over_time == want_time and over_rows == want_rows
    if mask.per_gate:
        gates_differ = bool((full != full[:, :1]).any())
        note += f", gates {gates_differ}"
        ok = ok and gates_differ
    return ok, note


def _one_step(
    layer: RecurrentLayer,
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One step of the generic path through the rule's hooks, returning a_t, c_t, h_t; for
    the GRU, a_t is (W_r x' + U_r h' + b_r, the same for z, W_n x' + b_in, U_n h'_n + b_hn),
    where its masks enter linearly, and there is no c_t."""
    masks = layer.draw_masks(1, x.size(1), x.device, x.dtype)
    z = layer.rule_masks(x, masks)
    rule = layer.rule
    weight = rule.pre_weights(layer.effective_weight_hh(masks), z)
    x_in = rule.pre_input(x, z)
    gate_major = any(
        m.per_gate and m.units is Units.hidden and z.get(m.name) is not None
        for m in rule.declared()
    )
    gx = layer._input_products(x_in, gate_major)[0]
    z_0 = {k: (None if v is None or v.dim() < 3 else v[0]) for k, v in z.items()}
    if layer.cell == "gru":
        bias_hh = layer.rnn.bias_hh_l0
        products = hidden_products(rule.pre_hidden(h, z_0), weight, bias_hh)
        a_r, a_u, a_n = gx.unbind(0) if gx.dim() == 3 else gx.chunk(3, dim=1)
        a = (a_r + products[0], a_u + products[1], a_n, products[2])
        return {"a": torch.stack(a), "h": rule.post_gru(gru_gates(gx, products), h, z_0)}
    a = preactivations(gx, rule.pre_hidden(h, z_0), weight)
    h_new, c_new = rule.post(activate(*a), h, c, z_0)
    return {"a": torch.stack(a), "c": c_new, "h": h_new}


def linear_point(layer: RecurrentLayer) -> LinearPoint | None:
    """Where the layer's masks enter linearly: the rule's declaration; for the built-ins,
    from which masks are on (None: nowhere, as Moon's mask inside the tanh)."""
    if layer.plugin:
        return layer.rule.linear_point
    d = layer.dropout
    if d.p_memory > 0:
        assert isinstance(layer, LSTMLayer)
        return LinearPoint.state if layer.memory.scale_on_output and not d.memory_carried else None
    if d.p_update > 0:
        return LinearPoint.memory
    if d.zoneout_cell > 0 or d.zoneout_hidden > 0:
        return LinearPoint.state
    return LinearPoint.preactivation


TENSORS = {
    LinearPoint.preactivation: ("a",),
    LinearPoint.memory: ("c",),
    LinearPoint.state: ("c", "h"),
}

#: The GRU has no memory: Semeniuta's d and zoneout's m enter h_t linearly.
GRU_TENSORS = {
    LinearPoint.preactivation: ("a",),
    LinearPoint.memory: ("h",),
    LinearPoint.state: ("h",),
}


def evaluation_check(
    variant: VariantConfig, draws: int = 4000, cell: Cell = Cell.lstm
) -> list[Check]:
    """Evaluation against the Monte Carlo mean of ``draws`` training draws, one step."""
    layer = layer_for(variant, LSTMPath.generic, cell=cell)
    tensors = GRU_TENSORS if cell is Cell.gru else TENSORS
    x, h, c = (t[:1, :1] for t in _inputs(TINY, cell=cell))
    with torch.no_grad():
        exact = _one_step(layer.eval(), x, h[0], c[0])
        layer.train()
        torch.manual_seed(6)
        rows = [_one_step(layer, x, h[0], c[0]) for _ in range(draws)]
    point = linear_point(layer)
    checks = []
    for name in ("a", "h") if cell is Cell.gru else ("a", "c", "h"):
        samples = torch.stack([r[name] for r in rows])
        mean, se = samples.mean(0), samples.std(0) / math.sqrt(draws)
        gap = (mean - exact[name]).abs()
        moving = se > 1e-12
        z = (gap[moving] / se[moving]).max().item() if moving.any() else 0.0
        still = gap[~moving].max().item() if (~moving).any() else 0.0
        label = {"a": "a_t", "c": "c_t", "h": "h_t"}[name]
        if point is not None and name in tensors[point]:
            ok = z <= Z_BOUND and still <= 1e-9
            checks.append(
                Check(
                    f"evaluation {label}",
                    ok,
                    f"linear point: max {z:.1f} se "
                    f"(≤ {Z_BOUND:g}), constant entries {still:.1e}; {draws} draws",
                )
            )
        elif name == "h" or (point is None and name == "c"):
            checks.append(
                Check(
                    f"gap {label}",
                    True,
                    f"E[train] - eval, not failed: max {gap.max().item():.2e} ({z:.1f} se)",
                )
            )
    return checks


def state_check(variant: VariantConfig, cell: Cell = Cell.lstm) -> Check:
    """Evaluation over 2T steps equals two windows of T with the state carried."""
    layer = layer_for(variant, LSTMPath.generic, cell=cell).eval()
    n, hidden, steps, rows = TINY
    x, h0, c0 = _inputs((n, hidden, 2 * steps, rows), cell=cell)
    with torch.no_grad():
        whole, (h, c) = layer(x, (h0, c0))
        first, state = layer(x[:steps], (h0, c0))
        second, (h2, c2) = layer(x[steps:], state)
    parts = torch.cat((first, second))
    worst = max(_max_abs(whole - parts), _max_abs(h - h2), _max_abs(c - c2))
    last = (whole[-1] - h[0]).abs().max().item()
    return Check(
        "state",
        worst <= 1e-12 and last == 0.0,
        f"2 windows vs 1: max abs diff {worst:.1e}; h_T is the last output",
    )


def all_checks(variant: VariantConfig, cell: Cell = Cell.lstm) -> list[Check]:
    """The layer-level checks in table order, on layers of ``cell``."""
    variant = replace(variant)  # never the caller's object
    return [
        gradient_check(variant, cell),
        fast_path_check(variant, cell),
        *mask_checks(variant, cell),
        *evaluation_check(variant, cell=cell),
        state_check(variant, cell),
    ]
