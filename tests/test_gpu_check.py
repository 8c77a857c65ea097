"""The GPU check's parts, on the CPU: the machine description, every step's status in the
report whatever fails, the gpu tests collected with only torch and the pack, and the
bench's precision flags per case."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnreg.records.provenance import cpu_model, machine_description

REPO = Path(__file__).resolve().parent.parent
STEPS = ("dependencies", "machine", "tests", "bench", "large")


def test_the_machine_description_names_the_processor_and_torch() -> None:
    described = machine_description("cpu")
    assert cpu_model() in described and torch.__version__ in described
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        machine_description("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            machine_description("cuda")


def gpu_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """scripts/gpu_check.sh with ``env``; its result and each step's status."""
    out = tmp_path / "check"
    settings = dict(os.environ, GPU_CHECK_OUT=str(out), GPU_CHECK_DEVICE="cpu") | env
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")],
        env=settings,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = (out / "report.md").read_text()
    table = report.split("## steps")[1].split("## bench")[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ")]
    return result, {step.strip(): status.strip() for step, status in rows[1:]}


def test_a_rehearsal_writes_the_machine_and_lists_every_step(tmp_path: Path) -> None:
    result, steps = gpu_check(tmp_path, GPU_CHECK_STEPS="machine")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert cpu_model() in (tmp_path / "check" / "machine.txt").read_text()
    assert steps["machine"] == "ok" and steps["dependencies"] == "ok"
    assert set(STEPS) <= set(steps) and steps["tests"] == "skipped"


def test_a_failed_machine_step_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    result, steps = gpu_check(tmp_path, GPU_CHECK_STEPS="machine large", GPU_CHECK_DEVICE="tpu")
    assert result.returncode == 1
    assert steps["machine"] == "failed (rc 1)"
    assert steps["large"] != "skipped" and set(STEPS) <= set(steps)  # it was tried after


def test_missing_wheels_end_the_check_with_a_report_that_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """A Python without hydra (a bare venv) and no wheels: exit 2, every step listed."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    result, steps = gpu_check(tmp_path, PYTHON=python, GPU_CHECK_WHEELS=str(tmp_path / "none"))
    assert result.returncode == 2
    assert steps["dependencies"] == "missing"
    assert all(steps[step] == "not run" for step in STEPS[1:])
    report = (tmp_path / "check" / "report.md").read_text()
    assert "hydra-core==1.3.2" in report and "make gpu-pack" in report
    (tmp_path / "wheels").mkdir()  # wheels that do not install: a failed install, reported
    for name in ("hydra_core-1.3.2", "omegaconf-2.3.0", "antlr4_python3_runtime-4.9.3"):
        (tmp_path / "wheels" / f"{name}-py3-none-any.whl").write_bytes(b"not a wheel")
    for name in ("pyyaml-6.0.4", "packaging-26.4", "numpy-2.4.6", "tqdm-4.70.1"):
        (tmp_path / "wheels" / f"{name}-py3-none-any.whl").write_bytes(b"not a wheel")
    result, steps = gpu_check(tmp_path, PYTHON=python, GPU_CHECK_WHEELS=str(tmp_path / "wheels"))
    assert result.returncode == 2 and steps["dependencies"].startswith("failed")
    assert all(steps[step] == "not run" for step in STEPS[1:])


def test_the_gpu_tests_collect_with_only_torch_pytest_and_the_pack() -> None:
    """scripts/bare_site.py: a site folder of torch, pytest and scripts/gpu_pack.txt with
    their dependencies; an optional package imported at module level (optuna, scipy,
    tensorboard, matplotlib) would be an error here."""
    listed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bare_site.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"torch", "hydra-core", "omegaconf", "pyyaml", "tqdm"} <= set(listed)
    assert not {"optuna", "scipy", "tensorboard", "matplotlib"} & set(listed)
    command = [sys.executable, str(REPO / "scripts" / "bare_site.py")]
    command += ["-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run([*command, "tests"], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert " error" not in output and "tests collected" in output


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_bench_times_every_case_under_its_own_precision(
    tmp_path: Path, monkeypatch, tiny_data: Path
) -> None:
    """Both Trainers are built first (the last one sets the process's flags); each timed
    step then runs under its own case's flags."""
    import argparse

    from rnnreg.core.precision import backend_precision
    from rnnreg.training.trainer import Trainer

    bench = load_bench()
    args = argparse.Namespace(
        device="cpu",
        eager=True,
        rounds=2,
        steps=2,
        warmup=1,
        profile_steps=1,
        time_budget=0,
        override=[
            "model.embedding_size=16",
            "model.hidden_size=16",
            "model.num_layers=1",
            f"dataset.data_dir={tiny_data}",
            f"dataset.cache_dir={tmp_path / 'c'}",
        ],
    )
    seen: list[tuple[str, str]] = []
    original = Trainer._train_step

    def spy(self, inputs, targets):  # noqa: ANN001
        seen.append((self.run.trainer.precision.value, backend_precision()["cuda.matmul"]))
        return original(self, inputs, targets)

    monkeypatch.setattr(Trainer, "_train_step", spy)
    cases = [bench.Case("small", "none", "auto", "default", p) for p in ("fp32", "tf32")]
    bench.bench_model("small", cases, args, tmp_path)
    assert all(not case.error for case in cases), [case.error for case in cases]
    expected = {"fp32": "ieee", "tf32": "tf32"}
    assert {p for p, _ in seen} == {"fp32", "tf32"}
    assert all(flag == expected[p] for p, flag in seen), seen
    assert all(case.ops is not None and case.ops.compute > 0 for case in cases)  # profiled too
