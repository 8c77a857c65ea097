"""The GRU cell (rnnreg/model/gru.py): nn.GRU exactly without masks, on both paths; every
in-step mask where the equations put it; autograd through every input; the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rnnreg.config.dropout import Granularity, InStepDropout, LSTMPath
from rnnreg.model.gru import GRULayer
from rnnreg.model.layer import PathError
from rnnreg.model.regularizers.layer_masks import StepMasks
from rnnreg.training.trainer import Trainer

T, B, N, H = 6, 3, 5, 4


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N, generator=gen, dtype=torch.float64)
    h0 = torch.randn(1, B, H, generator=gen, dtype=torch.float64)
    return x, h0, h0.new_zeros(1, B, 0)


def _reference_step(gru: torch.nn.GRU, x_t, h, z_x=None, z_h=None, d=None, m=None):
    """One step written from nn.GRU's documented equations, masks where gru.py puts them:
    z_x, z_h (3, ...) per gate; d on the candidate; m zoneout on h."""
    w_ih, w_hh = gru.weight_ih_l0.view(3, H, N), gru.weight_hh_l0.view(3, H, H)
    b_ih, b_hh = gru.bias_ih_l0.view(3, H), gru.bias_hh_l0.view(3, H)
    xs = [x_t if z_x is None else x_t * z_x[k] for k in range(3)]
    hs = [h if z_h is None else h * z_h[k] for k in range(3)]
    gi = [xs[k] @ w_ih[k].T + b_ih[k] for k in range(3)]
    gh = [hs[k] @ w_hh[k].T + b_hh[k] for k in range(3)]
    r, z = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
    n = torch.tanh(gi[2] + r * gh[2])
    new = (1 - z) * (n if d is None else d * n) + z * h
    return new if m is None else m * h + (1 - m) * new


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_without_masks_the_layer_is_nn_gru_forward_and_backward(path: str) -> None:
    torch.manual_seed(0)
    layer = GRULayer(N, H, InStepDropout(), path).double()
    reference = torch.nn.GRU(N, H).double()
    reference.load_state_dict(layer.gru.state_dict())  # the layer's parameters are nn.GRU's
    x, h0, c0 = _inputs()
    x.requires_grad_()
    out, (h, c) = layer(x, (h0, c0))
    want, want_h = reference(x, h0)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, want_h, rtol=1e-12, atol=1e-12)
    assert c.shape == (1, B, 0) and layer.path.value == path
    ours = torch.autograd.grad(out.sum(), (x, *layer.gru.parameters()))
    theirs = torch.autograd.grad(want.sum(), (x, *reference.parameters()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_compiled_generic_path_is_the_eager_one() -> None:
    """Blocks of 5 and 1 (T = 6), through torch.compile, forward and backward."""
    torch.manual_seed(1)
    d = InStepDropout(p_hidden=0.3, p_update=0.2, zoneout_hidden=0.1)
    eager = GRULayer(N, H, d).double()
    compiled = GRULayer(N, H, d).double()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_loop(block=5, backend="aot_eager")
    x, h0, c0 = _inputs(2)
    results = []
    for layer in (eager, compiled):
        torch.manual_seed(7)
        out, (h, _) = layer(x, (h0, c0))
        grads = torch.autograd.grad((out * out).sum() + h.sum(), list(layer.parameters()))
        results.append((out, h, *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert compiled.loop_mode == "compiled" and compiled.compilations >= 2


CASES = {
    "gal": dict(p_hidden=0.5),
    "gal_untied": dict(p_hidden=0.5, p_input=0.4, untied=True),
    "semeniuta": dict(p_update=0.4),
    "zoneout": dict(zoneout_hidden=0.3),
    "gal_semeniuta_zoneout": dict(p_hidden=0.3, p_update=0.2, zoneout_hidden=0.2),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mask_sits_where_the_equations_put_it(case: str) -> None:
    """The layer's training step against the step written from nn.GRU's equations, with
    the masks the layer drew."""
    torch.manual_seed(3)
    layer = GRULayer(N, H, InStepDropout(**CASES[case])).double().train()
    x, h0, c0 = _inputs(3)
    masks = layer.draw_masks(T, B, x.device, x.dtype)
    out, _ = layer(x, (h0, c0), masks=masks)

    def per_gate(mask):
        if mask is None:
            return None
        return mask.squeeze(0) if mask.dim() == 4 else mask[0].expand(3, *mask.shape[1:])

    def at(mask, t):
        return None if mask is None else mask[t if mask.size(0) > 1 else 0]

    h = h0[0]
    for t in range(T):
        h = _reference_step(
            layer.gru,
            x[t],
            h,
            z_x=per_gate(masks.input),
            z_h=per_gate(masks.hidden),
            d=at(masks.update, t),
            m=at(masks.zoneout_hidden, t),
        )
        torch.testing.assert_close(out[t], h, rtol=1e-12, atol=1e-12)


def test_a_zoneout_mask_of_ones_keeps_the_state() -> None:
    layer = GRULayer(N, H, InStepDropout(zoneout_hidden=0.5)).double().train()
    x, h0, c0 = _inputs(4)
    masks = StepMasks(zoneout_hidden=torch.ones(1, 1, H, dtype=torch.float64))
    out, (h, _) = layer(x, (h0, c0), masks=masks)
    assert torch.equal(out, h0.expand(T, B, H)) and torch.equal(h, h0)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_reaches_every_input_of_the_generic_path(case: str) -> None:
    torch.manual_seed(5)
    layer = GRULayer(N, H, InStepDropout(**CASES[case])).double().train()
    x, h0, c0 = _inputs(5)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, h0, *weights):
        torch.manual_seed(9)  # the same masks at every call
        given = dict(zip(names, weights, strict=True))
        out, (h, _) = torch.func.functional_call(layer, given, (x, (h0, c0)))
        return out, h

    assert torch.autograd.gradcheck(run, (x.requires_grad_(), h0.requires_grad_(), *params))


def test_evaluation_uses_the_expectation_of_unscaled_masks() -> None:
    """Semeniuta unscaled (update_scale=false): evaluation multiplies n by 1 - p."""
    torch.manual_seed(6)
    layer = GRULayer(N, H, InStepDropout(p_update=0.25, update_scale=False)).double().eval()
    x, h0, c0 = _inputs(6)
    out, _ = layer(x, (h0, c0))
    h = h0[0]
    for t in range(T):
        h = _reference_step(layer.gru, x[t], h, d=torch.full((B, H), 0.75, dtype=torch.float64))
        torch.testing.assert_close(out[t], h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(p_memory=0.5), "p_memory"),
        (dict(zoneout_cell=0.5, zoneout_hidden=0.05), "zoneout_cell=0.5"),
    ],
)
def test_masks_on_a_memory_cell_are_refused_in_one_line(settings: dict, message: str) -> None:
    with pytest.raises(PathError, match=message) as caught:
        GRULayer(N, H, InStepDropout(**settings))
    assert "\n" not in str(caught.value) and "GRU does not have" in str(caught.value)


def test_the_fused_path_refuses_an_in_step_mask_and_runs_a_batch_one() -> None:
    with pytest.raises(PathError, match="needs the loop path"):
        GRULayer(N, H, InStepDropout(p_hidden=0.5), LSTMPath.fused)
    d = InStepDropout(p_hidden=0.5, hidden_granularity=Granularity.batch, p_weight=0.3)
    assert GRULayer(N, H, d).path is LSTMPath.fused  # columns of U, and weight-drop
    layer = GRULayer(N, H, d).double().train()
    masks = layer.draw_masks(T, B, torch.device("cpu"), torch.float64)
    assert masks.weight_hh is not None and masks.weight_hh.shape == (3 * H, H)


@pytest.mark.parametrize(
    "variant, path",
    [("zaremba", "fused"), ("gal", "generic"), ("semeniuta", "generic"), ("awd", "fused")],
)
def test_a_gru_language_model_trains_and_its_layers_load_into_nn_gru(
    make_config, tmp_path: Path, variant: str, path: str
) -> None:
    run = make_config(f"variant={variant}", "model.cell=gru", "trainer.max_steps=6")
    trainer = Trainer(run, tmp_path / "run")
    summary = trainer.fit()
    assert summary["lstm_path"] == path and math.isfinite(summary["best_val_ppl"])
    layer = trainer.model.layers[0]
    reference = torch.nn.GRU(layer.input_size, layer.hidden_size)
    reference.load_state_dict(layer.gru.state_dict())
    assert all(k.startswith("layers.0.gru.") for k in trainer.model.state_dict() if "layers.0" in k)


def test_a_zoneout_preset_with_zoneout_cell_is_refused_for_the_gru(
    make_config, tmp_path: Path
) -> None:
    run = make_config("variant=zoneout", "model.cell=gru")
    with pytest.raises(PathError, match="variant.zoneout_cell=0"):
        Trainer(run, tmp_path / "run")


def test_a_plug_in_rule_runs_on_the_cells_it_names_and_refuses_the_rest() -> None:
    from rnnreg.model.lstm import LSTMLayer
    from rnnreg.model.rule import Rule

    class MemoryOnGru(Rule):
        name = "memory_on_gru"
        cells = ("lstm", "gru")

        def check_cell(self, cell: str) -> None:
            if cell == "gru":
                raise ValueError("it acts on the memory cell")

    class LstmOnly(Rule):
        name = "lstm_only"

    class Plain(Rule):  # no masks, the default hooks: the plain GRU
        name = "plain"
        cells = ("lstm", "gru")

    with pytest.raises(PathError, match="'memory_on_gru' on the GRU: it acts on the memory"):
        GRULayer(N, H, InStepDropout(), rule=MemoryOnGru())
    assert LSTMLayer(N, H, InStepDropout(), rule=MemoryOnGru()).path is LSTMPath.generic
    with pytest.raises(PathError, match=r"acts on the cells \['lstm'\], not on the GRU"):
        GRULayer(N, H, InStepDropout(), rule=LstmOnly())
    plain = GRULayer(N, H, InStepDropout(), rule=Plain()).double()
    x, h0, c0 = _inputs(8)
    reference = torch.nn.GRU(N, H).double()
    reference.load_state_dict(plain.gru.state_dict())
    torch.testing.assert_close(plain(x, (h0, c0))[0], reference(x, h0)[0], rtol=1e-12, atol=1e-12)
