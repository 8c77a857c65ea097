"""What a run needs from its device: checkpoints that resume on another device, one
precision for both LSTM paths, and a training step that never waits for the device."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import at_step
from torch.utils._python_dispatch import TorchDispatchMode

from rnnreg.config.schema import Precision, group_options
from rnnreg.core.precision import FLAGS, apply_precision, backend_precision
from rnnreg.evaluation.perplexity import evaluate
from rnnreg.model.recurrence import InStepMasks, backward_steps, forward_saving
from rnnreg.records.checkpoint import LAST, load_checkpoint, save_checkpoint
from rnnreg.training.optim import FiniteSGD
from rnnreg.training.trainer import Trainer

VARIANTS = group_options("variant")

#: The ops whose result is a Python value: the host waits for the device at each.
HOST_READS = {"aten._local_scalar_dense.default", "aten.equal.default", "aten.is_nonzero.default"}


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (``.item()``,
    ``float(t)``, ``bool(t)``, ``if t:``); on a CPU, where nothing is asynchronous,
    these are what would make a GPU wait."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if str(func) in HOST_READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads(device: torch.device) -> Iterator[HostReads]:
    """On a GPU, CUDA's own sync debug mode raises at any synchronisation; on a CPU the
    dispatch mode above counts the reads."""
    mode = HostReads()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield mode
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    with mode:
        yield mode


def windows(trainer: Trainer, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bptt, data = trainer.run.trainer.bptt, trainer.train_data
    return [
        (data[k * bptt : (k + 1) * bptt], data[k * bptt + 1 : (k + 1) * bptt + 1])
        for k in range(count)
    ]


# --- no host synchronisation ----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_training_step_never_reads_the_device(
    make_config, tmp_path: Path, variant: str, device: torch.device
) -> None:
    """Forward, loss, backward, clipping, the finite-guarded update, NT-ASGD's average."""
    run = make_config(f"variant={variant}", f"trainer.device={device.type}")
    trainer = Trainer(run, tmp_path / "run")
    if variant == "awd":
        trainer.averaging.start(trainer.model, epoch=0)  # the averaged phase too
    trainer.state = trainer.model.init_state(run.trainer.batch_size)
    steps = windows(trainer, 3)
    with no_host_reads(device) as reads:
        for inputs, targets in steps:
            trainer._train_step(inputs, targets)
    assert reads.reads == []
    nll, _, bad, count, _ = trainer.totals.read()  # read once, afterwards
    assert count == 3 and bad is None and math.isfinite(nll)


def test_evaluation_reads_the_device_once_per_split(make_config, tmp_path: Path) -> None:
    trainer = Trainer(make_config("variant=zaremba"), tmp_path / "run")
    assert trainer.valid_data.size(0) > 3 * trainer.run.eval.bptt  # several windows
    with HostReads() as reads:
        evaluate(trainer.model, trainer.valid_data, trainer.run.eval.bptt)
    assert len(reads.reads) == 1


def test_an_epoch_reads_the_device_only_at_log_intervals_and_checkpoints(
    make_config, tmp_path: Path
) -> None:
    run = make_config("trainer.log_every_steps=10", "trainer.checkpoint_every_s=0")
    trainer = Trainer(run, tmp_path / "run")
    reads_at: list[int] = []
    original = trainer.totals.read

    def counted():
        reads_at.append(trainer.progress.step)
        return original()

    trainer.totals.read = counted  # type: ignore[method-assign]
    trainer.fit()
    steps_per_epoch = trainer.progress.step // trainer.progress.epochs_done
    assert steps_per_epoch > 30
    # one read per 10 steps, plus one at each epoch's end
    assert len(reads_at) <= trainer.progress.step // 10 + trainer.progress.epochs_done


# --- divergence -----------------------------------------------------------------------


def test_a_non_finite_step_changes_no_weight() -> None:
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    before = [w.detach().clone() for w in weights]
    optimizer = FiniteSGD(weights, lr=0.5, weight_decay=0.1)
    for w in weights:
        w.grad = torch.full_like(w, math.nan)
    optimizer.finite_step(finite=torch.tensor(False))
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w.detach(), b)


def test_a_finite_step_is_torch_sgd_exactly() -> None:
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(4))]
    theirs = [torch.nn.Parameter(w.detach().clone()) for w in ours]
    grads = [torch.randn_like(w) for w in ours]
    sgd = torch.optim.SGD(theirs, lr=0.3 * 0.8, weight_decay=1e-3)
    finite_sgd = FiniteSGD(ours, lr=0.3, weight_decay=1e-3)
    for w, v, g in zip(ours, theirs, grads, strict=True):
        w.grad, v.grad = g.clone(), g.clone()
    finite_sgd.finite_step(lr_scale=0.8, finite=torch.tensor(True))
    sgd.step()
    for w, v in zip(ours, theirs, strict=True):
        torch.testing.assert_close(w, v, rtol=0, atol=1e-7)
    sgd_state = torch.optim.SGD(ours, lr=1.0).state_dict()  # an older checkpoint's optimizer
    FiniteSGD(ours, lr=2.0).load_state_dict(sgd_state)


def test_a_checkpoint_of_the_older_finite_sgd_loads_and_steps() -> None:
    """Before 2026-12-05 its groups held only lr and weight_decay (a torch.optim.Optimizer)."""
    weights = [torch.nn.Parameter(torch.ones(3))]
    old = {"state": {}, "param_groups": [{"lr": 0.25, "weight_decay": 0.0, "params": [0]}]}
    optimizer = FiniteSGD(weights, lr=1.0)
    optimizer.load_state_dict(old)
    assert optimizer.param_groups[0]["lr"] == 0.25 and optimizer.param_groups[0]["fused"]
    weights[0].grad = torch.ones(3)
    optimizer.finite_step(finite=torch.tensor(True))
    torch.testing.assert_close(weights[0].detach(), torch.full((3,), 0.75))


def test_the_optimizer_step_costs_the_same_operators_for_any_number_of_parameters() -> None:
    """One fused update, whatever the parameter count; no read back to the host."""
    from rnnreg.core.opcount import count_operators

    def counts(n: int):
        weights = [torch.nn.Parameter(torch.randn(3)) for _ in range(n)]
        for w in weights:
            w.grad = torch.randn(3)
        optimizer = FiniteSGD(weights, lr=0.1, weight_decay=0.01)
        finite = torch.tensor(True)
        return count_operators(lambda: optimizer.finite_step(lr_scale=0.5, finite=finite), steps=2)

    few, many = counts(2), counts(40)
    assert few.compute == many.compute and few.dispatches == many.dispatches
    assert few.per_step(few.compute) <= 4, few.names
    assert "aten::item" not in few.names and "aten::_local_scalar_dense" not in few.names


def test_a_diverged_run_keeps_its_last_good_checkpoint(
    make_config, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A NaN at a step of epoch 2, seen only when the epoch's sums are read: the run ends
    ``diverged``, the checkpoint is epoch 1's, and no weight saw the NaN step."""
    run = make_config("trainer.epochs=3", "trainer.log_every_steps=1000", "seed=4")
    first = Trainer(run, tmp_path / "probe")
    steps_per_epoch = first.windows_per_epoch
    bad = steps_per_epoch + 5
    monkeypatch.setenv("RNNREG_TEST_NAN", f"4:{bad}")
    trainer = Trainer(run, tmp_path / "run")
    weights_before_bad: dict[str, torch.Tensor] = {}
    original = Trainer._train_step

    def step(self, inputs, targets):
        if self.progress.step + 1 == bad:
            weights_before_bad.update(
                {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            )
        original(self, inputs, targets)
        if self.progress.step + 1 == bad:
            for key, value in self.model.state_dict().items():
                assert torch.equal(value, weights_before_bad[key]), key  # step skipped

    monkeypatch.setattr(Trainer, "_train_step", step)
    with caplog.at_level(logging.ERROR):
        summary = trainer.fit()
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == bad
    assert summary["epochs"] == 1 and summary["test_ppl"] is None
    assert f"step {bad}" in caplog.text
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / LAST)
    assert ckpt["epochs_done"] == 1 and ckpt["step"] == steps_per_epoch
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_huge_but_finite_loss_ends_the_run_as_diverged(make_config, tmp_path: Path) -> None:
    """NLL 1e6 per token is finite, but its perplexity is not: before, the log line's
    math.exp raised OverflowError; now the step counts as not finite."""
    trainer = Trainer(make_config("trainer.epochs=2", "trainer.log_every_steps=10"), tmp_path / "r")
    calls = {"n": 0}

    def blow_up(module, args, output):
        calls["n"] += 1
        return output * 1e6 if module.training and calls["n"] >= 25 else output

    trainer.model.decoder.register_forward_hook(blow_up)
    summary = trainer.fit()
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 25


# --- checkpoints across devices -------------------------------------------------------


def test_a_checkpoint_from_another_device_resumes_with_one_line(
    make_config, tmp_path: Path, caplog
) -> None:
    """A checkpoint a GPU run wrote (its RNG states: the CPU's and CUDA's, on the CPU)
    resumes here, saying once that the random streams differ from there on."""
    run_dir = tmp_path / "run"
    Trainer(make_config("trainer.max_steps=20", "variant=zaremba"), run_dir).fit()
    path = run_dir / "checkpoints" / LAST
    ckpt = load_checkpoint(path)
    ckpt["rng"] = {**ckpt["rng"], "device": "cuda", "cuda": [torch.get_rng_state()]}
    save_checkpoint(path, ckpt)
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(
            make_config("trainer.max_steps=40", "variant=zaremba", "trainer.resume=true"), run_dir
        ).fit()
    lines = [r.getMessage() for r in caplog.records if "random streams" in r.getMessage()]
    assert len(lines) == 1 and "written on cuda and resumes on cpu" in lines[0]
    assert resumed["status"] == "completed" and resumed["steps"] == 40


def test_a_checkpoint_loads_on_the_cpu_whatever_the_device(make_config, tmp_path: Path) -> None:
    from rnnreg.training.resume import load_resumable

    run_dir = tmp_path / "run"
    run = make_config("trainer.max_steps=5")
    Trainer(run, run_dir).fit()
    from rnnreg.config.schema import as_plain_dict

    _, ckpt = load_resumable(run_dir, as_plain_dict(run))
    assert ckpt["rng"]["torch"].device.type == "cpu"
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())


def test_resume_on_the_device_repeats_the_uninterrupted_run(
    make_config, tmp_path: Path, device: torch.device, monkeypatch
) -> None:
    """Stopped inside epoch 1 (a SLURM preemption's SIGUSR2), then resumed."""
    on = (f"trainer.device={device.type}", "variant=gal", "trainer.epochs=2")
    whole = Trainer(make_config(*on), tmp_path / "whole").fit()
    original = at_step(monkeypatch, 70, lambda t: setattr(t.stop, "signal", signal.SIGUSR2))
    cut = Trainer(make_config(*on), tmp_path / "cut").fit()
    assert cut["status"] == "interrupted" and cut["steps"] == 70
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = Trainer(make_config(*on, "trainer.resume=true"), tmp_path / "cut").fit()
    for key in ("best_val_ppl", "test_ppl", "steps"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6 if device.type == "cuda" else 0)


# --- precision ------------------------------------------------------------------------


def test_each_precision_sets_every_backend_flag() -> None:
    assert set(apply_precision(Precision.fp32).values()) == {"ieee"}
    tf32 = apply_precision(Precision.tf32)
    assert {tf32[f] for f in FLAGS if f.startswith("cu")} == {"tf32"}
    assert {tf32[f] for f in FLAGS if f.startswith("mkldnn")} == {"ieee"}  # no TF32 on CPUs
    assert set(apply_precision(Precision.bf16).values()) == {"ieee"}
    assert backend_precision() == apply_precision(Precision.fp32)


class ProductDtypes(TorchDispatchMode):
    """The dtypes of the matrix products a forward pass runs."""

    PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "mkldnn_rnn_layer", "_cudnn_rnn", "linear")

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func.__name__.split(".")[0] in self.PRODUCTS:
            self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor) and a.dim() > 1}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["zaremba", "gal"])  # the fused path and the loop path
def test_the_precision_applies_to_both_paths_and_is_recorded(
    make_config, tmp_path: Path, variant: str, precision: str
) -> None:
    run = make_config(f"variant={variant}", f"trainer.precision={precision}", "trainer.max_steps=3")
    trainer = Trainer(run, tmp_path / "run")
    assert trainer.model.lstm_path == ("fused" if variant == "zaremba" else "loop")
    trainer.state = trainer.model.init_state(run.trainer.batch_size)
    inputs, targets = windows(trainer, 1)[0]
    with ProductDtypes() as seen:
        trainer.model(inputs, trainer.state)
    wanted = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen.dtypes == {wanted}
    trainer._train_step(inputs, targets)  # the gradients reach the fp32 weights, finite
    assert all(p.grad.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters())
    summary = trainer.fit()
    assert summary["precision"] == precision
    assert summary["backend_precision"] == backend_precision()


def test_bf16_keeps_the_hand_written_backwards_sums_in_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    steps, batch, hidden = 4, 3, 5
    gx = torch.randn(steps, batch, 4 * hidden, generator=gen).bfloat16()
    h0, c0 = torch.zeros(batch, hidden), torch.zeros(batch, hidden)
    weight = 0.3 * torch.randn(4 * hidden, hidden, generator=gen)
    masks, memory = InStepMasks(), (False, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, _, _, gates, c_prev, tau, _ = forward_saving(gx, h0, c0, weight, masks, memory)
        d_out = torch.randn(steps, batch, hidden, generator=gen)
        deltas, dh, dc = backward_steps(d_out, h0, c0, gates, c_prev, tau, weight, masks, memory)
    assert gates.dtype == torch.bfloat16  # saved at the products' precision
    assert dh.dtype == dc.dtype == deltas.dtype == torch.float32
