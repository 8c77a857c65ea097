"""Nothing lost: kill -9 at any moment, corrupt checkpoints, changed configs, full disks.

The subprocess tests here are marked ``slow`` (``make test-fast`` leaves them out; CI
runs them). Fault points are the hooks of ``rnnreg/core/testhooks.py``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DEVICES

from rnnreg import RnnregError
from rnnreg.core.files import remove_orphaned_temporaries
from rnnreg.records.checkpoint import LAST, load_checkpoint, previous_checkpoint
from rnnreg.training.trainer import Trainer
from tests.conftest import at_step

#: The columns that a resumed run must reproduce exactly (time-dependent ones excluded).
REPRODUCED = ("epoch", "step", "lr", "train_ppl", "val_ppl", "averaged", "asgd_switch_epoch")
FINAL = ("status", "best_val_ppl", "best_epoch", "test_ppl", "test_ppl_best", "test_ppl_final")


def rows(run_dir: Path) -> list[tuple[str, ...]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [tuple(row[k] for k in REPRODUCED) for row in csv.DictReader(handle)]


def orphans(run_dir: Path) -> list[Path]:
    """Temporary files a killed write left in the run's checkpoints folder."""
    return sorted((run_dir / "checkpoints").glob(".*.tmp"))


def final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {key: summary[key] for key in FINAL}


# --- checkpoints ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    make_config, tmp_path: Path, damage: str, caplog
) -> None:
    """last.pt and last.prev.pt are both kept; a bad last.pt costs one epoch, not the run."""
    whole = Trainer(make_config("variant=zaremba", "trainer.epochs=3"), tmp_path / "whole")
    whole.fit()
    cut = tmp_path / "cut"
    Trainer(make_config("variant=zaremba", "trainer.epochs=2"), cut).fit()
    last = cut / "checkpoints" / LAST
    assert load_checkpoint(previous_checkpoint(last))["epochs_done"] == 1
    if damage == "truncated":  # a kill during a write on a file system without rename
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"\x00" * 100)
    else:  # killed between moving last.pt aside and renaming the new one into place
        last.unlink()
    resumed = make_config("variant=zaremba", "trainer.epochs=3", "trainer.resume=true")
    with caplog.at_level("WARNING"):
        Trainer(resumed, cut).fit()
    if damage != "missing":
        warned = [r for r in caplog.records if "previous checkpoint" in r.getMessage()]
        assert len(warned) == 1 and str(last) in warned[0].getMessage()
    assert rows(cut) == rows(tmp_path / "whole")
    assert final(cut) == final(tmp_path / "whole")


def test_no_readable_checkpoint_is_one_error_naming_the_files(make_config, tmp_path) -> None:
    run_dir = tmp_path / "run"
    Trainer(make_config("trainer.max_steps=3", "trainer.epochs=2"), run_dir).fit()
    last = run_dir / "checkpoints" / LAST
    Trainer(
        make_config("trainer.max_steps=6", "trainer.epochs=2", "trainer.resume=true"), run_dir
    ).fit()
    for path in (last, previous_checkpoint(last)):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(RnnregError) as caught:
        Trainer(make_config("trainer.resume=true", "trainer.epochs=2"), run_dir).fit()
    message = str(caught.value)
    assert "\n" not in message and "unreadable" in message
    assert str(last) in message and str(previous_checkpoint(last)) in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("variant.p_input=0.3", "variant.p_input"),
        ("optim.lr=0.5", "optim.lr"),
        ("seed=7", "seed"),
        ("model.hidden_size=12", "model.hidden_size"),
        ("trainer.bptt=6", "trainer.bptt"),
    ],
)
def test_resuming_with_a_changed_computation_is_refused(
    make_config, tmp_path: Path, override: str, key: str
) -> None:
    run_dir = tmp_path / "run"
    Trainer(make_config("variant=zaremba", "trainer.max_steps=3"), run_dir).fit()
    changed = make_config("variant=zaremba", "trainer.resume=true", override)
    with pytest.raises(RnnregError, match="settings differ from its checkpoint") as caught:
        Trainer(changed, run_dir).fit()
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_resuming_may_extend_the_run_and_change_how_it_runs(make_config, tmp_path) -> None:
    run_dir = tmp_path / "run"
    Trainer(make_config("variant=zaremba", "trainer.max_steps=3"), run_dir).fit()
    extended = make_config(
        "variant=zaremba",
        "trainer.resume=true",
        "trainer.max_steps=6",
        "trainer.epochs=2",
        "trainer.checkpoint_every_s=5",
        "trainer.log_every_steps=1",
        "eval.test_weights=final",
        "eval.mc_samples=2",
    )
    summary = Trainer(extended, run_dir).fit()
    assert summary["status"] == "completed" and summary["steps"] == 6


def test_each_process_that_trained_a_run_is_recorded_with_its_machine(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    import rnnreg.training.trainer as trainer_module

    run_dir, steps = tmp_path / "run", iter((3, 6, 9))
    for machine in ("Intel Xeon, 2 thread(s)", "AMD EPYC, 2 thread(s)", "AMD EPYC, 2 thread(s)"):
        monkeypatch.setattr(trainer_module, "this_machine", lambda device, m=machine: m)
        resume = ["trainer.resume=true"] if run_dir.exists() else []
        config = make_config("variant=zaremba", f"trainer.max_steps={next(steps)}", *resume)
        summary = Trainer(config, run_dir).fit()
    assert summary["steps"] == 9
    assert summary["machines"] == ["Intel Xeon, 2 thread(s)", "AMD EPYC, 2 thread(s)"]


def test_a_full_disk_is_one_line_and_leaves_no_half_written_file(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    import rnnreg.core.files

    run_dir = tmp_path / "run"
    real_fsync = os.fsync

    def full_disk(trainer) -> None:
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(rnnreg.core.files.os, "fsync", fsync)

    trainer = Trainer(make_config("variant=zaremba", "trainer.epochs=2"), run_dir)
    at_step(monkeypatch, trainer.windows_per_epoch + 3, full_disk)  # the disk fills in epoch 2
    with pytest.raises(RnnregError) as caught:
        trainer.fit()
    monkeypatch.setattr(rnnreg.core.files.os, "fsync", real_fsync)
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message
    leftovers = [p.name for p in run_dir.rglob("*.tmp")]
    assert not leftovers, leftovers
    summary = json.loads((run_dir / "summary.json").read_text())  # still whole JSON
    assert summary["status"] == "running" and summary["epochs"] == 1
    ckpt = load_checkpoint(run_dir / "checkpoints" / LAST)  # the last good one, intact
    assert ckpt["epochs_done"] == 1


def test_only_other_processes_temporaries_are_removed(tmp_path: Path) -> None:
    """What a killed write left is deleted; this process's own write in flight is kept."""
    orphan = tmp_path / ".last.pt.4194304.tmp"
    own = tmp_path / f".best.pt.{os.getpid()}.tmp"
    kept = tmp_path / "last.pt"
    for path in (orphan, own, kept):
        path.write_bytes(b"x")
    assert remove_orphaned_temporaries(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own.name, kept.name])
    assert remove_orphaned_temporaries(tmp_path / "none") == []  # no folder yet


@pytest.mark.slow
def test_an_unwritable_output_folder_is_one_line(python, tmp_path: Path, tiny_data) -> None:
    from tests.test_cli_errors import TINY, assert_one_error_line, run_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(
        python, tmp_path, *TINY, f"hydra.run.dir={blocker / 'run'}", data_dir=tiny_data
    )
    assert_one_error_line(result, "cannot write the output folder", str(blocker / "run"))


# --- kill -9 ------------------------------------------------------------------------------

TRAIN = [
    "variant=zaremba",
    "model.embedding_size=16",
    "model.hidden_size=16",
    "model.compile=false",
    "trainer.batch_size=4",
    "trainer.bptt=8",
    "eval.batch_size=4",
    "eval.bptt=8",
    "trainer.epochs=3",
    "trainer.threads=1",
    "trainer.progress=log",
    "trainer.checkpoint_every_s=0.05",
    "trainer.device=cpu",  # the kill -9 runs choose theirs (a later override wins)
]


def _env(tiny_data: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RNNREG_DATA_DIR=str(tiny_data), RNNREG_CACHE_DIR=str(tmp_path / "c"))
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on a GPU
    env.pop("RNNREG_TEST_PAUSE", None)
    env.update(extra)
    return env


def _train(python: str, run_dir: Path, env: dict[str, str], *extra: str):
    return subprocess.run(
        [python, "-m", "rnnreg.train", *TRAIN, *extra, f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module", params=DEVICES)
def kill_device(request: pytest.FixtureRequest) -> str:
    """The device the kill -9 runs train on (cuDNN's and cuBLAS's deterministic modes: a
    fixed cuBLAS workspace, CUBLAS_WORKSPACE_CONFIG)."""
    return request.param


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, python_module, kill_device) -> Path:
    from tests.conftest import write_tiny_corpus

    root = tmp_path_factory.mktemp(f"kill9-{kill_device}")
    write_tiny_corpus(root / "data")
    run_dir = root / "whole"
    result = _train(
        python_module, run_dir, _env(root / "data", root), f"trainer.device={kill_device}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def python_module() -> str:
    import sys

    return sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("point", ["step:150", "validation:2", "checkpoint:4", "test:1"])
def test_kill_9_anywhere_then_resume_gives_the_same_numbers(
    reference_run: Path, python_module: str, point: str, kill_device: str
) -> None:
    """SIGKILL inside a step, during validation, while a checkpoint's bytes are written
    (not yet renamed), during the final test evaluation; the resumed run ends with the
    uninterrupted run's metrics.csv, best validation and test perplexities, exactly."""
    root = reference_run.parent
    run_dir = root / f"killed-{point.replace(':', '-')}"
    marker = root / f"marker-{point.replace(':', '-')}"
    env = _env(root / "data", root, RNNREG_TEST_PAUSE=point, RNNREG_TEST_MARKER=str(marker))
    process = subprocess.Popen(
        [
            *(python_module, "-m", "rnnreg.train", *TRAIN),
            *(f"trainer.device={kill_device}", f"hydra.run.dir={run_dir}"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    if point.startswith("checkpoint"):  # killed mid-write: the half-written file is left
        assert orphans(run_dir)

    resumed = _train(
        python_module,
        run_dir,
        _env(root / "data", root),
        "trainer.resume=true",
        f"trainer.device={kill_device}",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert rows(run_dir) == rows(reference_run)
    assert final(run_dir) == final(reference_run)
    assert not orphans(run_dir)  # the resumed run deleted it


@pytest.mark.slow
def test_a_nan_mid_sweep_marks_that_run_diverged_and_the_sweep_goes_on(
    python: str, tmp_path: Path, tiny_data: Path
) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            python,
            "-m",
            "rnnreg.train",
            "-m",
            *[arg for arg in TRAIN if not arg.startswith("trainer.epochs")],
            "trainer.epochs=2",
            "seed=1,2",
            f"hydra.sweep.dir={sweep}",
        ],
        env=_env(tiny_data, tmp_path, RNNREG_TEST_NAN="1:150"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = {
        json.loads(p.read_text())["seed"]: json.loads(p.read_text())
        for p in sweep.glob("*/summary.json")
    }
    assert summaries[1]["status"] == "diverged" and summaries[1]["diverged_at_step"] == 150
    assert summaries[2]["status"] == "completed" and summaries[2]["test_ppl"] is not None
    diverged_dir = next(p.parent for p in sweep.glob("*/summary.json") if "seed1" in str(p))
    ckpt = load_checkpoint(diverged_dir / "checkpoints" / LAST)
    assert ckpt["step"] < 150 and ckpt["epochs_done"] == 1


@pytest.mark.slow
def test_a_stopped_run_leaves_the_stop_out_of_its_training_time(
    python_module: str, tmp_path: Path
) -> None:
    """SIGSTOP for 3 s, then SIGCONT (a run paused for a benchmark, a suspended SLURM job):
    the summary counts the stop apart (``stopped_s``), and its ``wall_time_s`` is the
    same run's without a stop, not 3 s more."""
    from tests.conftest import write_tiny_corpus

    write_tiny_corpus(tmp_path / "data")
    command = [python_module, "-m", "rnnreg.train", *TRAIN, "trainer.epochs=1"]
    pause = dict(RNNREG_TEST_PAUSE="step:20", RNNREG_TEST_PAUSE_S="1")
    env = _env(tmp_path / "data", tmp_path, **pause)
    unstopped = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'whole'}"], env=env)
    assert unstopped.returncode == 0
    marker, run_dir = tmp_path / "marker", tmp_path / "run"
    env = _env(tmp_path / "data", tmp_path, **pause, RNNREG_TEST_MARKER=str(marker))
    process = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"], env=env)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=240) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["status"] == "completed" and reference["stopped_s"] == 0.0
    assert 2.5 < summary["stopped_s"] < 3.7
    assert summary["wall_time_s"] < reference["wall_time_s"] + 1.5
