"""Sweeps: joblib in parallel, the SLURM launcher config, preemption and requeue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rnnreg import RunInUse
from rnnreg.cli.train import threads_per_job
from rnnreg.config.schema import CONF_DIR
from rnnreg.core.process import exclusive_run
from rnnreg.reporting.report import build_report
from rnnreg.training.trainer import Trainer
from tests.conftest import at_step
from tests.test_train import RESUME_SETTINGS, _outcome, train

pytestmark = pytest.mark.slow  # subprocesses: left out by make test-fast

TINY = [
    "model.embedding_size=16",
    "model.hidden_size=16",
    "trainer.batch_size=4",
    "trainer.bptt=8",
    "eval.batch_size=4",
    "trainer.max_steps=15",
    "trainer.device=cpu",
]


def test_two_job_joblib_multirun_gives_two_summaries_and_a_report(
    tiny_data: Path, tmp_path: Path, python: str
) -> None:
    sweep = tmp_path / "sweep"
    env = dict(os.environ, RNNREG_DATA_DIR=str(tiny_data), RNNREG_CACHE_DIR=str(tmp_path / "c"))
    launch = [
        python,
        "-m",
        "rnnreg.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        "trainer.auto_resume=true",
    ]
    # The first job's directory is held by another live process (a sweep launched twice):
    # that job is skipped, the other one runs, and the sweep itself succeeds.
    with exclusive_run(sweep / "0_none_seed1"):
        blocked = subprocess.run(
            launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    assert blocked.returncode == 0, blocked.stderr[-2000:]
    assert not (sweep / "0_none_seed1" / "summary.json").exists()
    assert (sweep / "1_none_seed2" / "summary.json").exists()
    assert "being trained by another process" in (sweep / "0_none_seed1" / "train.log").read_text()
    assert not (sweep / "0_none_seed1" / ".hydra").exists()  # the refused launch wrote no record

    # Launched again once the owner is gone: the skipped job runs, the finished one is kept.
    finished = (sweep / "1_none_seed2" / "summary.json").read_text()
    result = subprocess.run(
        launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert (sweep / "1_none_seed2" / "summary.json").read_text() == finished
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    seen = [json.loads(path.read_text()) for path in summaries]
    assert sorted(s["seed"] for s in seen) == [1, 2]
    assert all(s["status"] == "completed" for s in seen)
    overrides = (sweep / "0_none_seed1" / ".hydra" / "overrides.yaml").read_text()
    assert "- seed=1\n" in overrides  # written once the job was accepted
    cores = os.cpu_count() or 1
    assert all(s["config"]["trainer"]["threads"] == max(1, cores // 2) for s in seen)
    markdown = build_report(sweep).read_text()
    assert "| 15 steps | standard | fp32 | 2 (1 2) |" in markdown


@pytest.mark.filterwarnings("error::UserWarning")  # figures whose long labels fit them
def test_a_rate_sweep_over_two_seeds_is_two_report_rows(
    tiny_data: Path, tmp_path: Path, python: str
) -> None:
    """The sweep a new user runs first: two rates of one variant, two seeds each; its report,
    labels of every setting changed included, draws without a layout warning."""
    sweep = tmp_path / "sweep"
    env = dict(os.environ, RNNREG_DATA_DIR=str(tiny_data), RNNREG_CACHE_DIR=str(tmp_path / "c"))
    launch = [
        *(python, "-m", "rnnreg.train", "-m", "variant=zaremba", "variant.p_input=0.2,0.6"),
        *("seed=1,2", *TINY, "model.compile=false", f"hydra.sweep.dir={sweep}"),
    ]
    result = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(sweep.glob("*/summary.json"))) == 4
    table = build_report(sweep).read_text().split("\n## ")[0]  # the table, not the sections
    rows = [line for line in table.splitlines() if "| zaremba (" in line]
    assert len(rows) == 2  # labelled by all they change from the preset: TINY and the rate
    for rate, row in zip(("0.2", "0.6"), sorted(rows), strict=True):
        assert f"variant.p_input={rate}) | 15 steps | standard | fp32 | 2 (1 2) |" in row


def test_threads_per_job_keeps_jobs_times_threads_within_the_cores() -> None:
    cores = os.cpu_count() or 1
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert threads_per_job({"_target_": joblib, "n_jobs": 2}) == max(1, cores // 2)
    assert threads_per_job({"_target_": joblib, "n_jobs": -1}) == 1
    assert threads_per_job({"_target_": "hydra._internal.core_plugins.basic_launcher"}) == 0


def test_slurm_launcher_config_composes(monkeypatch) -> None:
    monkeypatch.setenv("RNNREG_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("RNNREG_SLURM_TIMEOUT_MIN", "720")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_task) == ("gpu", 720, 1)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="needs POSIX signals")
def test_a_preempted_job_checkpoints_hands_over_the_signal_and_resumes(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    """SLURM's USR2 mid-epoch: checkpoint, let submitit requeue, continue where it stopped."""
    train(make_config(*RESUME_SETTINGS), tmp_path / "whole")
    expected = _outcome(tmp_path / "whole")

    requeued: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: requeued.append(signum))
    original = at_step(monkeypatch, 170, lambda trainer: os.kill(os.getpid(), signal.SIGUSR2))
    settings = (*RESUME_SETTINGS, "trainer.auto_resume=true")
    try:
        first = Trainer(make_config(*settings), tmp_path / "job").fit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert first["status"] == "interrupted" and first["steps"] == 170
    assert requeued == [signal.SIGUSR2]  # the launcher's handler got the signal after us

    monkeypatch.setattr(Trainer, "_train_step", original)
    requeue = Trainer(make_config(*settings), tmp_path / "job")  # same overrides, same dir
    summary = requeue.fit()
    assert summary["status"] == "completed" and summary["steps"] == expected_steps(tmp_path)
    assert _outcome(tmp_path / "job") == expected


def expected_steps(tmp_path: Path) -> int:
    return json.loads((tmp_path / "whole" / "summary.json").read_text())["steps"]


def test_auto_resume_without_a_checkpoint_starts_anew(make_config, tmp_path: Path) -> None:
    summary = Trainer(
        make_config("trainer.auto_resume=true", "trainer.max_steps=3"), tmp_path / "fresh"
    ).fit()
    assert summary["status"] == "completed" and summary["steps"] == 3


def test_a_relaunched_sweep_skips_completed_runs_and_extends_changed_ones(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    settings = ("trainer.auto_resume=true", "trainer.epochs=1")
    first = Trainer(make_config(*settings), tmp_path / "job").fit()
    assert first["status"] == "completed" and first["epochs"] == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run must not train or evaluate again")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", no_training)
        patch.setattr(Trainer, "_finish", no_training)
        # how a run executes (threads, progress display) is not what it computes
        rerun = make_config(*settings, "trainer.threads=2", "trainer.progress=log")
        again = Trainer(rerun, tmp_path / "job").fit()
    assert again == first

    more = Trainer(make_config("trainer.auto_resume=true", "trainer.epochs=2"), tmp_path / "job")
    extended = more.fit()
    assert extended["status"] == "completed" and extended["epochs"] == 2
    assert extended["steps"] == 2 * first["steps"]


def test_a_run_directory_is_locked_while_trained_and_freed_when_its_owner_dies(
    tmp_path: Path, python: str
) -> None:
    job = tmp_path / "job"
    owner = subprocess.Popen(
        [
            python,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from rnnreg.core.process import exclusive_run\n"
            "with exclusive_run(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(120)\n",
            str(job),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUse, match=f"pid {owner.pid}"), exclusive_run(job):
            pass
    finally:
        owner.kill()  # SIGKILL: no clean-up code runs in the owner
        owner.wait()
    with exclusive_run(job):  # no stale lock after a crash
        assert (job / ".lock").read_text().strip() == str(os.getpid())
