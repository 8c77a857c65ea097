"""The LSTM layer against docs/variants.md's equations, written out here independently."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from rnnreg.config.dropout import MemoryScale
from rnnreg.config.schema import Precision
from rnnreg.core.precision import apply_precision
from rnnreg.model.lstm import InStepDropout, LSTMLayer, StepMasks
from rnnreg.model.regularizers.masks import Granularity

N_IN, H, T, B = 5, 6, 7, 4


def reference(
    layer: LSTMLayer,
    x,
    state,
    masks: StepMasks,
    *,
    memory_carried=False,
    memory_on_output=False,
    zoneout_eval=None,
):
    """The step equations of docs/variants.md, one gate at a time, with the given masks.

    Gate k uses rows k*H:(k+1)*H of W, U and b (i, f, g, o). Masks have a leading time
    dimension of T or 1; untied ones have a gate dimension after it.
    """
    W = layer.lstm.weight_ih_l0
    U = layer.lstm.weight_hh_l0
    if masks.weight_hh is not None:
        U = U * masks.weight_hh
    b = layer.lstm.bias_ih_l0 + layer.lstm.bias_hh_l0
    h, c = state[0][0], state[1][0]

    def at(mask, t):
        return None if mask is None else mask[t if mask.size(0) > 1 else 0]

    outputs = []
    for t in range(x.size(0)):
        pre = []
        for k in range(4):
            rows = slice(k * H, (k + 1) * H)
            zx, zh = at(masks.input, t), at(masks.hidden, t)
            xk = x[t] if zx is None else x[t] * (zx[k] if zx.dim() == 3 else zx)
            hk = h if zh is None else h * (zh[k] if zh.dim() == 3 else zh)
            pre.append(xk @ W[rows].T + hk @ U[rows].T + b[rows])
        i, f, g, o = (
            torch.sigmoid(pre[0]),
            torch.sigmoid(pre[1]),
            torch.tanh(pre[2]),
            torch.sigmoid(pre[3]),
        )
        zu = at(masks.update, t)
        c_hat = f * c + (i * g if zu is None else zu * i * g)
        zm = at(masks.memory, t)
        if zm is not None and memory_on_output:  # 0/1 mask b in the memory, z on the output
            b_m = (zm > 0).to(zm.dtype)
            if memory_carried:
                c_hat = b_m * c_hat
            h_hat = o * torch.tanh(c_hat * b_m) * zm
        elif zm is not None and memory_carried:
            c_hat = zm * c_hat
            h_hat = o * torch.tanh(c_hat)
        elif zm is not None:
            h_hat = o * torch.tanh(c_hat * zm)
        else:
            h_hat = o * torch.tanh(c_hat)
        zc, zhh = at(masks.zoneout_cell, t), at(masks.zoneout_hidden, t)
        c_new = c_hat if zc is None else zc * c + (1 - zc) * c_hat
        h_new = h_hat if zhh is None else zhh * h + (1 - zhh) * h_hat
        h, c = h_new, c_new
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def memory_form(dropout: dict) -> dict[str, bool]:
    """The reference's Moon switches for a VARIANTS entry."""
    return {
        "memory_carried": dropout.get("memory_carried", False),
        "memory_on_output": dropout.get("memory_scale") is MemoryScale.on_output,
    }


def make_layer(device="cpu", path="auto", dtype=torch.float64, **dropout) -> LSTMLayer:
    torch.manual_seed(0)
    layer = LSTMLayer(N_IN, H, InStepDropout(**dropout), path=path).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.5, 0.5)
    return layer.to(device)


def inputs(device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, N_IN, generator=g, dtype=dtype)
    state = (
        torch.randn(1, B, H, generator=g, dtype=dtype),
        torch.randn(1, B, H, generator=g, dtype=dtype),
    )
    return x.to(device), (state[0].to(device), state[1].to(device))


VARIANTS = {
    "none": {},
    "gal_tied": {"p_hidden": 0.3},
    "gal_untied": {"p_hidden": 0.3, "p_input": 0.5, "untied": True},
    "gal_step": {"p_hidden": 0.3, "hidden_granularity": Granularity.step},
    "gal_untied_inputs_only": {"p_input": 0.5, "untied": True},
    "gal_untied_step": {
        "p_hidden": 0.3,
        "p_input": 0.2,
        "untied": True,
        "hidden_granularity": Granularity.step,
        "input_granularity": Granularity.step,
    },
    "moon": {"p_memory": 0.5, "memory_scale": MemoryScale.in_memory},
    "moon_carried": {
        "p_memory": 0.5,
        "memory_carried": True,
        "memory_scale": MemoryScale.in_memory,
    },
    "moon_on_output": {"p_memory": 0.5, "memory_scale": MemoryScale.on_output},
    "moon_carried_on_output": {
        "p_memory": 0.5,
        "memory_carried": True,
        "memory_scale": MemoryScale.on_output,
    },
    "moon_on_output_unscaled": {
        "p_memory": 0.4,
        "memory_scale": MemoryScale.on_output,
        "scale": False,
    },
    "semeniuta_step": {"p_update": 0.25},
    "semeniuta_sequence_unscaled": {
        "p_update": 0.5,
        "update_granularity": Granularity.sequence,
        "update_scale": False,
    },
    "zoneout": {"zoneout_cell": 0.5, "zoneout_hidden": 0.05},
    "weight_drop": {"p_weight": 0.5},
    "gal_batch_tied": {"p_hidden": 0.3, "hidden_granularity": Granularity.batch},
    "gal_batch_untied": {"p_hidden": 0.3, "hidden_granularity": Granularity.batch, "untied": True},
    # unscaled masks: evaluation multiplies by E[z] = 1 - p instead
    "gal_sequence_unscaled": {"p_hidden": 0.3, "scale": False},
    "gal_batch_unscaled": {
        "p_hidden": 0.3,
        "hidden_granularity": Granularity.batch,
        "scale": False,
    },
    "gal_batch_untied_unscaled": {
        "p_hidden": 0.3,
        "hidden_granularity": Granularity.batch,
        "untied": True,
        "scale": False,
    },
    "moon_unscaled": {"p_memory": 0.5, "scale": False, "memory_scale": MemoryScale.in_memory},
    "composed": {
        "zoneout_cell": 0.25,
        "zoneout_hidden": 0.025,
        "p_update": 0.2,
        "p_weight": 0.3,
        "p_hidden": 0.2,
    },
}


def on_both_paths(names) -> list:
    """(variant, path): its own path, and the loop too when it runs fused."""
    cases = []
    for name in sorted(names):
        cases.append((name, "auto"))
        if LSTMLayer(N_IN, H, InStepDropout(**VARIANTS[name])).path.value == "fused":
            cases.append((name, "loop"))
    return cases


@pytest.mark.parametrize(("name", "path"), on_both_paths(VARIANTS))
def test_layer_matches_the_spec_equations_with_the_same_masks(
    name: str, path: str, device: torch.device
) -> None:
    dropout = VARIANTS[name]
    layer = make_layer(device, path, **dropout).train()
    x, state = inputs(device)
    torch.manual_seed(2)
    masks = layer.draw_masks(T, B, x.device, x.dtype)
    out, (h, c) = layer(x, state, masks)
    ref_out, (ref_h, ref_c) = reference(layer, x, state, masks, **memory_form(dropout))
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h[0], ref_h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c[0], ref_c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_eval_is_deterministic_and_uses_mask_expectations(name: str) -> None:
    dropout = VARIANTS[name]
    layer = make_layer(**dropout).eval()
    x, state = inputs()
    first, _ = layer(x, state)
    second, _ = layer(x, state)
    assert torch.equal(first, second)
    expected = StepMasks()
    if dropout.get("zoneout_cell"):
        expected.zoneout_cell = torch.full((1, 1, H), dropout["zoneout_cell"], dtype=x.dtype)
        expected.zoneout_hidden = torch.full((1, 1, H), dropout["zoneout_hidden"], dtype=x.dtype)
    if dropout.get("update_scale") is False:
        expected.update = torch.full((1, 1, H), 1 - dropout["p_update"], dtype=x.dtype)
    if dropout.get("scale") is False and dropout.get("p_hidden"):
        expected.hidden = torch.full((1, 1, H), 1 - dropout["p_hidden"], dtype=x.dtype)
    if dropout.get("scale") is False and dropout.get("p_memory"):
        expected.memory = torch.full((1, 1, H), 1 - dropout["p_memory"], dtype=x.dtype)
    ref, _ = reference(layer, x, state, expected, **memory_form(dropout))
    torch.testing.assert_close(first, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [MemoryScale.on_output, MemoryScale.in_memory])
def test_moon_evaluation_is_the_expected_training_output(scale: MemoryScale) -> None:
    """At the first step each unit's output depends on its own z_m only, so the
    expectation over z_m ∈ {0, 1/(1-p)} is the mean of the all-dropped and the all-kept
    runs. ``on_output`` evaluates (z_m = 1) to exactly that; ``in_memory`` does not
    (tanh(ĉ/(1-p)) ≠ tanh(ĉ)/(1-p)): the gap the moon_medium row measured
    (results/README.md)."""
    p = 0.5
    layer = make_layer(p_memory=p, memory_scale=scale)
    x, state = inputs()
    x = x[:1]
    outputs = []
    for value in (0.0, 1.0 / (1.0 - p)):
        masks = StepMasks(memory=torch.full((1, B, H), value, dtype=x.dtype))
        outputs.append(layer.train()(x, state, masks)[0])
    expected = (1 - p) * outputs[1] + p * outputs[0]
    evaluated = layer.eval()(x, state)[0]
    gap = (evaluated - expected).abs().max().item()
    if scale is MemoryScale.on_output:
        assert gap < 1e-12
    else:
        assert gap > 1e-2


@pytest.mark.parametrize("path", ["fused", "loop"])
def test_zero_rates_match_nn_lstm_on_both_paths(path: str, device: torch.device) -> None:
    """In fp32 under ``precision=fp32``, against ``nn.LSTM`` (cuDNN on a GPU) at fp32's
    tolerance: with cuDNN's TF32 left on (PyTorch's default) the fused path would be ~1e-3
    away from the loop's IEEE products."""
    apply_precision(Precision.fp32)
    layer = make_layer(device, path, dtype=torch.float32).train()
    plain = nn.LSTM(N_IN, H).to(device)
    plain.load_state_dict(layer.lstm.state_dict())
    x, state = inputs(device, torch.float32)
    out, (h, c) = layer(x, state)
    ref, (ref_h, ref_c) = plain(x, state)
    torch.testing.assert_close(out, ref)  # float32's default: rtol 1.3e-6, atol 1e-5
    torch.testing.assert_close((h, c), (ref_h, ref_c))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    for name, p in plain.named_parameters():
        torch.testing.assert_close(dict(layer.lstm.named_parameters())[name].grad, p.grad)


def test_paths_are_chosen_from_the_masks() -> None:
    assert LSTMLayer(3, 4, InStepDropout()).path.value == "fused"
    assert LSTMLayer(3, 4, InStepDropout(p_weight=0.5)).path.value == "fused"
    batch_h = InStepDropout(p_hidden=0.3, hidden_granularity=Granularity.batch)
    assert LSTMLayer(3, 4, batch_h).path.value == "fused"
    for name in ("gal_tied", "gal_untied", "moon", "semeniuta_step", "zoneout"):
        assert LSTMLayer(3, 4, InStepDropout(**VARIANTS[name])).path.value == "loop", name
    assert LSTMLayer(3, 4, InStepDropout(), path="loop").path.value == "loop"
    with pytest.raises(ValueError, match="loop path"):
        LSTMLayer(3, 4, InStepDropout(p_memory=0.5), path="fused")


def test_mask_granularities_inside_the_layer() -> None:
    layer = LSTMLayer(
        N_IN,
        H,
        InStepDropout(
            p_hidden=0.5,
            p_memory=0.5,
            p_update=0.5,
            zoneout_cell=0.5,
            p_input=0.5,
            untied=True,
        ),
    ).train()
    masks = layer.draw_masks(T, B, torch.device("cpu"), torch.float32)
    # sequence masks: one per row, constant over time, different between rows
    for mask in (masks.hidden, masks.memory, masks.input):
        assert mask.size(0) == 1
        assert not torch.equal(mask[0, ..., 0, :], mask[0, ..., 1, :])
    # untied: a different mask per gate
    assert masks.hidden.shape == (1, 4, B, H)
    assert not torch.equal(masks.hidden[0, 0], masks.hidden[0, 1])
    # step masks: fresh at every step
    for mask in (masks.update, masks.zoneout_cell):
        assert mask.shape == (T, B, H)
        assert not torch.equal(mask[0], mask[1])
    # zoneout keep masks are binary and unscaled; inverted masks are {0, 1/(1-p)}
    assert set(masks.zoneout_cell.unique().tolist()) == {0.0, 1.0}
    assert set(masks.memory.unique().tolist()) == {0.0, 2.0}


def test_zoneout_keep_rate_is_p() -> None:
    layer = LSTMLayer(N_IN, 64, InStepDropout(zoneout_cell=0.25, zoneout_hidden=0.05)).train()
    torch.manual_seed(0)
    masks = layer.draw_masks(200, 50, torch.device("cpu"), torch.float32)
    assert abs(masks.zoneout_cell.mean().item() - 0.25) < 0.01
    assert abs(masks.zoneout_hidden.mean().item() - 0.05) < 0.005


def test_batch_hidden_mask_is_a_column_mask_on_the_fused_path() -> None:
    layer = make_layer(p_hidden=0.5, hidden_granularity=Granularity.batch).train()
    assert layer.path.value == "fused"
    x, state = inputs()
    torch.manual_seed(3)
    masks = layer.draw_masks(T, B, x.device, x.dtype)
    column = masks.weight_hh[0]  # the same z_h for every row of U: columns are dropped
    assert torch.equal(masks.weight_hh, column.expand_as(masks.weight_hh))
    out, _ = layer(x, state, masks)
    as_h_mask = StepMasks(hidden=column.reshape(1, 1, H))
    ref, _ = reference(layer, x, state, as_h_mask)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


class TestWeightDrop:
    """The failure modes of older weight-drop implementations, one by one."""

    def layer(self, device="cpu") -> LSTMLayer:
        return make_layer(device, p_weight=0.5)

    def test_keeps_the_fused_path_and_the_parameter_names(self) -> None:
        layer = self.layer()
        assert layer.path.value == "fused"
        names = {name for name, _ in layer.named_parameters()}
        assert names == {f"lstm.{n}_l0" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def test_gradient_reaches_the_raw_weight_and_is_zero_where_dropped(self) -> None:
        layer = self.layer().train()
        x, state = inputs()
        masks = layer.draw_masks(T, B, x.device, x.dtype)
        out, _ = layer(x, state, masks)
        out.sum().backward()
        grad = layer.lstm.weight_hh_l0.grad
        assert grad is not None
        dropped = masks.weight_hh == 0
        assert dropped.any() and (~dropped).any()
        assert torch.all(grad[dropped] == 0)
        assert grad[~dropped].abs().sum() > 0

    def test_forward_changes_no_parameter(self) -> None:
        layer = self.layer().train()
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        x, state = inputs()
        layer(x, state)
        for key, value in layer.state_dict().items():
            assert torch.equal(value, before[key]), key

    def test_optimizer_step_changes_the_raw_weight_and_the_next_forward_sees_it(self) -> None:
        layer = self.layer().train()
        optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
        x, state = inputs()
        raw = layer.lstm.weight_hh_l0
        before = raw.detach().clone()
        layer(x, state)[0].sum().backward()
        optimizer.step()
        assert layer.lstm.weight_hh_l0 is raw
        assert not torch.equal(raw.detach(), before)
        layer.eval()
        plain = nn.LSTM(N_IN, H).double()
        plain.load_state_dict(layer.lstm.state_dict())
        torch.testing.assert_close(layer(x, state)[0], plain(x, state)[0])

    def test_eval_uses_the_undropped_weight(self) -> None:
        layer = self.layer().eval()
        plain = nn.LSTM(N_IN, H).double()
        plain.load_state_dict(layer.lstm.state_dict())
        x, state = inputs()
        torch.testing.assert_close(layer(x, state)[0], plain(x, state)[0], rtol=0, atol=0)
        layer.train()
        assert not torch.allclose(layer(x, state)[0], plain(x, state)[0])

    def test_state_dict_round_trip(self, tmp_path) -> None:
        layer = self.layer()
        torch.save(layer.state_dict(), tmp_path / "w.pt")
        fresh = LSTMLayer(N_IN, H, InStepDropout(p_weight=0.5)).double()
        fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
        x, state = inputs()
        layer.eval()
        fresh.eval()
        assert torch.equal(layer(x, state)[0], fresh(x, state)[0])

    def test_moving_the_module_keeps_working(self) -> None:
        layer = self.layer().train()
        moved = layer.to(torch.float32).to("cpu")
        x, state = inputs()
        out, _ = moved(x.float(), (state[0].float(), state[1].float()))
        out.sum().backward()
        assert moved.lstm.weight_hh_l0.grad is not None
        assert moved.lstm.weight_hh_l0.dtype == torch.float32

    def test_no_warning_is_emitted(self, device: torch.device) -> None:
        """Warnings are errors here: cuDNN's "weights are not part of one contiguous
        chunk" (a dropped weight passed the wrong way) would fail the test."""
        layer = self.layer(device).train()
        x, state = inputs(device)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = layer(x, state)[0]
            out.sum().backward()
            layer.eval()(x, state)
        assert layer.lstm.weight_hh_l0.grad is not None

    def test_gradient_is_zero_where_dropped_on_the_device(self, device: torch.device) -> None:
        layer = self.layer(device).train()
        x, state = inputs(device)
        masks = layer.draw_masks(T, B, x.device, x.dtype)
        layer(x, state, masks)[0].sum().backward()
        dropped = masks.weight_hh == 0
        assert dropped.any() and (layer.lstm.weight_hh_l0.grad[dropped] == 0).all()


def test_compiled_loop_computes_the_same_as_the_eager_loop() -> None:
    """Traced by dynamo (the 'eager' backend keeps the test fast; inductor is the default)."""
    dropout = VARIANTS["composed"]
    layer = make_layer(**dropout).train()
    eager = make_layer(**dropout).train()
    eager.load_state_dict(layer.state_dict())
    layer.compile_loop(block=3, backend="eager")  # T = 7: two blocks and a single step
    x, state = inputs()
    masks = layer.draw_masks(T, B, x.device, x.dtype)
    out, _ = layer(x, state, masks)
    ref, _ = reference(layer, x, state, masks)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (eager(x, state, masks)[0] * weights).sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, dict(eager.named_parameters())[name].grad, msg=name)
    with torch.no_grad():  # evaluation runs the same blocks, without a graph
        torch.testing.assert_close(layer(x, state, masks)[0], ref, rtol=1e-6, atol=1e-6)


def test_each_configuration_compiles_into_its_own_cache() -> None:
    """Twelve configurations in one process: none falls back to eager (the shared cache
    of one module-level function would hit dynamo's recompile limit of 8)."""
    import torch._dynamo

    x, _ = inputs()
    with torch._dynamo.config.patch(recompile_limit=8):
        layers = []
        for size in range(3, 15):  # each size: new shapes, a compile of its own
            layer = LSTMLayer(N_IN, size, InStepDropout(p_hidden=0.3)).double().train()
            layer.compile_loop(backend="eager", dynamic=False)
            zero = torch.zeros(1, B, size, dtype=x.dtype)
            layer(x, (zero, zero))[0].sum().backward()
            layers.append(layer)
    assert all(layer.loop_mode == "compiled" for layer in layers)


def test_hitting_the_recompile_limit_falls_back_visibly(caplog) -> None:
    import torch._dynamo

    layer = make_layer(p_hidden=0.37).train()
    layer.compile_loop(block=T, backend="eager", dynamic=False)  # one block per window
    x, state = inputs()
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING"):
        layer(x, state)[0].sum().backward()
        assert layer.loop_mode == "compiled"
        masks = StepMasks()  # no z_h: another graph of the same block, over the limit
        out, _ = layer(x, state, masks)
    assert layer.loop_mode == "eager"
    assert "recompile limit" in caplog.text
    ref, _ = reference(layer, x, state, masks)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_a_layers_dropout_settings_cannot_change_after_construction() -> None:
    """They key the layer's compiled loop: a change would run a stale compilation."""
    import dataclasses

    settings = InStepDropout(p_hidden=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.p_hidden = 0.5
    assert hash(settings) == hash(InStepDropout(p_hidden=0.3))
    assert dataclasses.replace(settings, p_hidden=0.5).p_hidden == 0.5
