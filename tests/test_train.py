"""The trainer end to end on a tiny corpus: records, resume, divergence, main()'s value."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from rnnreg.cli.train import train
from rnnreg.config.schema import CONF_DIR, to_run_config
from rnnreg.records.checkpoint import LAST, load_checkpoint
from rnnreg.training.optim import StepDecay
from rnnreg.training.trainer import Trainer
from tests.conftest import at_step

REPO = Path(__file__).resolve().parent.parent


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_hydra_run_writes_tensorboard_csv_and_summary(tiny_data: Path, tmp_path: Path, python):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    env = dict(os.environ, RNNREG_DATA_DIR=str(tiny_data), RNNREG_CACHE_DIR=str(tmp_path / "c"))
    result = subprocess.run(
        [
            python,
            "-m",
            "rnnreg.train",
            "variant=zaremba",
            "trainer.max_steps=20",
            "trainer.log_every_steps=5",
            "model.embedding_size=16",
            "model.hidden_size=16",
            "trainer.batch_size=4",
            "trainer.bptt=8",
            "eval.batch_size=4",
            "trainer.threads=1",
            "trainer.device=cpu",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 1
    assert set(rows[0]) == {
        "epoch",
        "step",
        "lr",
        "train_ppl",
        "val_ppl",
        "tokens_per_s",
        "elapsed_s",
        "averaged",
        "asgd_switch_epoch",
    }
    assert rows[0]["step"] == "20" and float(rows[0]["val_ppl"]) > 1

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["dataset"], summary["model"], summary["variant"]) == ("ptb", "small", "zaremba")
    assert summary["dropout"]["p_input"] == 0.5 and summary["dropout"]["p_output"] == 0.5
    assert summary["steps"] == 20 and summary["params"] > 0
    assert summary["best_val_ppl"] == pytest.approx(float(rows[0]["val_ppl"]), rel=1e-4)
    assert math.isfinite(summary["test_ppl"]) and summary["tokens_per_s"] > 0
    assert summary["torch_version"] == torch.__version__ and summary["device"] == "cpu"
    for key in ("wall_time_s", "git_commit", "seed", "epochs"):
        assert key in summary

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/ppl",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "val/ppl",
        "test/ppl",
    } <= tags
    assert [e.step for e in events.Scalars("train/ppl")] == [5, 10, 15, 20]
    assert events.Scalars("val/ppl")[0].value == pytest.approx(summary["best_val_ppl"], rel=1e-5)
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams and "hparam/test_ppl" in tags
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "- variant=zaremba\n" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_train_returns_the_best_validation_perplexity(make_config, tmp_path: Path) -> None:
    run = make_config("trainer.epochs=2")
    best = train(run, tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert best == pytest.approx(min(float(r["val_ppl"]) for r in rows), rel=1e-4)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["best_val_ppl"] == best
    assert float(rows[1]["val_ppl"]) < float(rows[0]["val_ppl"])  # it learns


def test_lr_follows_zaremba_schedule(make_config, tmp_path: Path) -> None:
    run = make_config("trainer.epochs=4", "optim.lr_decay_factor=2", "optim.decay_after_epoch=2")
    train(run, tmp_path / "run")
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "run" / "metrics.csv")]
    assert lrs == [1.0, 1.0, 0.5, 0.25]


def lua_learning_rates(max_epoch: int, decay: float, epochs: int) -> list[float]:
    """The rate of each epoch in Zaremba's (and Gal's) main.lua: after every epoch,
    ``if epoch > max_epoch then lr = lr / decay end``."""
    lr, rates = 1.0, []
    for epoch in range(1, epochs + 1):
        rates.append(lr)
        if epoch > max_epoch:
            lr = lr / decay
    return rates


@pytest.mark.parametrize(
    ("experiment", "max_epoch", "decay"),
    [
        ("zaremba_small", 4, 2.0),
        ("zaremba_medium", 6, 1.2),
        ("zaremba_large", 14, 1.15),
        ("gal_medium", 6, 1.2),
        ("gal_large", 10, 1.15),
    ],
)
def test_paper_presets_follow_the_learning_rates_of_the_lua_code(
    experiment: str, max_epoch: int, decay: float
) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=[f"experiment={experiment}"]))
    schedule = StepDecay(run.optim.lr_decay_factor, run.optim.decay_after_epoch)
    ours = [run.optim.lr * schedule(done) for done in range(run.trainer.epochs)]
    expected = lua_learning_rates(max_epoch, decay, run.trainer.epochs)
    assert ours == pytest.approx(expected, rel=1e-12)


RESUME_SETTINGS = ("variant=zaremba", "trainer.epochs=3", "optim.decay_after_epoch=1")


def _outcome(run_dir: Path) -> tuple[list[tuple[str, str, str]], float, float]:
    rows = [(r["epoch"], r["train_ppl"], r["val_ppl"]) for r in read_csv(run_dir / "metrics.csv")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return rows, summary["best_val_ppl"], summary["test_ppl"]


def test_resume_after_a_signal_mid_epoch_equals_an_uninterrupted_run(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    train(make_config(*RESUME_SETTINGS), tmp_path / "whole")
    expected = _outcome(tmp_path / "whole")

    # epoch 2 of 3 (about 100 windows per epoch)
    original = at_step(monkeypatch, 130, lambda trainer: setattr(trainer.stop, "signal", 15))
    summary = Trainer(make_config(*RESUME_SETTINGS), tmp_path / "cut").fit()
    assert summary["status"] == "interrupted" and summary["steps"] == 130
    monkeypatch.setattr(Trainer, "_train_step", original)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoints" / LAST)
    assert ckpt["epochs_done"] == 1 and ckpt["position"] > 0

    Trainer(make_config(*RESUME_SETTINGS, "trainer.resume=true"), tmp_path / "cut").fit()
    assert _outcome(tmp_path / "cut") == expected


def _crash(trainer: Trainer) -> None:
    raise RuntimeError("simulated crash")


def test_resume_after_a_crash_uses_the_last_periodic_checkpoint(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    train(make_config(*RESUME_SETTINGS), tmp_path / "whole")
    expected = _outcome(tmp_path / "whole")

    original = at_step(monkeypatch, 160, _crash, before=True)
    settings = (*RESUME_SETTINGS, "trainer.checkpoint_every_s=1e-6")
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(make_config(*settings), tmp_path / "cut").fit()
    monkeypatch.setattr(Trainer, "_train_step", original)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoints" / LAST)
    assert ckpt["step"] == 159 and ckpt["position"] > 0

    Trainer(make_config(*settings, "trainer.resume=true"), tmp_path / "cut").fit()
    assert _outcome(tmp_path / "cut") == expected


def test_a_nan_loss_stops_the_run_as_diverged_and_keeps_the_last_checkpoint(
    make_config, tmp_path: Path
) -> None:
    trainer = Trainer(make_config("trainer.epochs=3"), tmp_path / "run")
    forward_calls = {"n": 0}

    def poison(module, args, output):
        if module.training:
            forward_calls["n"] += 1
            if forward_calls["n"] >= 150:  # inside epoch 2
                return output * float("nan")
        return output

    trainer.model.decoder.register_forward_hook(poison)
    summary = trainer.fit()
    assert summary["status"] == "diverged"
    assert summary["test_ppl"] is None and summary["epochs"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / LAST)
    assert ckpt["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_second_run_in_the_same_directory_needs_resume(make_config, tmp_path: Path) -> None:
    from rnnreg import RnnregError

    train(make_config("trainer.max_steps=3"), tmp_path / "run")
    with pytest.raises(RnnregError, match="trainer.resume=true"):
        train(make_config("trainer.max_steps=3"), tmp_path / "run")


def test_plateau_schedule_divides_when_validation_stalls() -> None:
    from rnnreg.config.schema import OptimConfig, Schedule
    from rnnreg.training.optim import build_optimizer

    cfg = OptimConfig(lr=1.0, schedule=Schedule.plateau, lr_decay_factor=1.5)
    optimizer, schedule = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    lrs = []
    for val_loss in (5.0, 4.0, 4.5, 3.9, 3.95, 4.2):
        schedule.step(val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1 / 1.5, 1 / 1.5, 1 / 1.5**2, 1 / 1.5**3])


def test_summary_records_the_lstm_path_and_mc_perplexities(make_config, tmp_path: Path) -> None:
    run = make_config("variant=gal", "trainer.max_steps=5", "eval.mc_samples=3")
    train(run, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lstm_path"] == "loop" and summary["mc_samples"] == 3
    assert math.isfinite(summary["test_ppl_mc"]) and math.isfinite(summary["val_ppl_mc"])
    assert summary["test_ppl_mc"] != summary["test_ppl"]


def test_device_selection() -> None:
    from rnnreg import RnnregError
    from rnnreg.config.schema import Device
    from rnnreg.core.runtime import select_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device(Device.auto).type == expected
    assert select_device(Device.cpu).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RnnregError, match="trainer.device=auto"):
            select_device(Device.cuda)


@pytest.mark.parametrize("weights", ["best", "final"])
def test_test_perplexity_of_final_and_best_weights(
    make_config, tmp_path: Path, weights, monkeypatch
):
    """Both test perplexities are recorded; ``test_ppl`` is the one eval.test_weights names,
    each computed from the weights it claims (last.pt after the last epoch, best.pt)."""
    import dataclasses

    from rnnreg.evaluation.perplexity import evaluate
    from rnnreg.model.lm import LanguageModel

    # the last epoch's validation reads 10 nats worse, so the best epoch is not the last
    # whatever the trajectory (an overshooting lr made it so on one machine's rounding only)
    validations = []

    def validation(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        validations.append(result)
        if len(validations) < 4:
            return result
        return dataclasses.replace(result, nll_sum=result.nll_sum + 10.0 * result.tokens)

    monkeypatch.setattr("rnnreg.training.trainer.evaluate", validation)
    run = make_config("variant=zaremba", "trainer.epochs=4", f"eval.test_weights={weights}")
    trainer = Trainer(run, tmp_path / "run")
    summary = trainer.fit()
    assert summary["test_weights"] == weights
    assert summary["best_epoch"] < 4 and summary["test_ppl_best"] != summary["test_ppl_final"]
    assert summary["test_ppl"] == summary[f"test_ppl_{weights}"]
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert summary["last_val_ppl"] == pytest.approx(float(rows[-1]["val_ppl"]), rel=1e-4)
    model = LanguageModel(trainer.corpus.vocab_size, run.model, run.variant)
    for name, key in (("last.pt", "test_ppl_final"), ("best.pt", "test_ppl_best")):
        model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / name)["model"])
        expected = evaluate(model, trainer.test_data, run.eval.bptt).perplexity
        assert summary[key] == pytest.approx(expected, rel=1e-6), key


def test_the_progress_bar_runs(make_config, tmp_path: Path) -> None:
    """trainer.progress=bar (the default on a terminal) trains and shows a bar."""
    summary = Trainer(make_config("trainer.max_steps=5", "trainer.progress=bar"), tmp_path).fit()
    assert summary["status"] == "completed"


def test_a_refused_launch_leaves_the_runs_record_untouched(make_config, tmp_path: Path) -> None:
    """``.hydra/`` holds the latest *accepted* launch: a run in use or a changed config on
    resume is refused before anything in the run directory changes."""
    from rnnreg import RnnregError, RunInUse
    from rnnreg.core.process import exclusive_run
    from rnnreg.records.launch import LaunchRecord

    run_dir, hydra_dir = tmp_path / "run", tmp_path / "run" / ".hydra"
    settings = ("trainer.max_steps=10", "trainer.epochs=1")
    first = LaunchRecord(("variant=zaremba", "trainer.max_steps=10"), "seed: 1\n")
    Trainer(make_config("variant=zaremba", *settings), run_dir, launch=first).fit()
    assert (hydra_dir / "overrides.yaml").read_text() == (
        "- variant=zaremba\n- trainer.max_steps=10\n"
    )
    assert (hydra_dir / "config.yaml").read_text() == "seed: 1\n"
    record = {p.name: p.read_bytes() for p in hydra_dir.iterdir()}

    changed = LaunchRecord(("variant=gal", "trainer.resume=true"), "seed: 1\n")
    with pytest.raises(RnnregError, match="cannot resume"):
        Trainer(
            make_config("variant=gal", *settings, "trainer.resume=true"), run_dir, launch=changed
        ).fit()
    busy = LaunchRecord(("variant=zaremba", "trainer.resume=true"), "other: 2\n")
    with exclusive_run(run_dir), pytest.raises(RunInUse):
        Trainer(
            make_config("variant=zaremba", *settings, "trainer.resume=true"), run_dir, launch=busy
        ).fit()
    assert {p.name: p.read_bytes() for p in hydra_dir.iterdir()} == record

    longer = LaunchRecord(("variant=zaremba", "trainer.max_steps=20"), "seed: 1\n")
    Trainer(
        make_config(
            "variant=zaremba", "trainer.max_steps=20", "trainer.epochs=1", "trainer.resume=true"
        ),
        run_dir,
        launch=longer,
    ).fit()
    assert "trainer.max_steps=20" in (hydra_dir / "overrides.yaml").read_text()
    launches = (hydra_dir / "launches.log").read_text().splitlines()
    assert [line.split()[1] for line in launches] == ["start", "resume"]


def test_a_copy_without_git_records_the_declared_commit(monkeypatch) -> None:
    """A tree shipped without .git (cluster node, GPU machine) names its commit by
    $RNNREG_GIT_COMMIT, marked as a copy; without it the commit is unknown (None)."""
    from rnnreg.records import provenance as runtime

    def no_git(*args: str) -> str:
        raise subprocess.CalledProcessError(128, ["git", *args])

    monkeypatch.setattr(runtime, "_git", no_git)
    monkeypatch.delenv(runtime.GIT_COMMIT_ENV, raising=False)
    assert runtime.git_commit() is None
    monkeypatch.setenv(runtime.GIT_COMMIT_ENV, "abc123")
    assert runtime.git_commit() == "abc123 (copy)"


def test_the_test_split_is_scored_once_when_the_best_epoch_is_the_last(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    """Best and final weights the same: one batch-1 pass gives test_ppl_best and _final."""
    import rnnreg.evaluation.final as final

    passes = []
    original = final.evaluate

    def counted(model, source, bptt, meter=None):
        passes.append(source.size(1))
        return original(model, source, bptt, meter)

    monkeypatch.setattr(final, "evaluate", counted)
    summary = Trainer(make_config("trainer.epochs=1"), tmp_path / "run").fit()
    assert summary["best_epoch"] == summary["epochs"] == 1
    assert passes == [1]  # the test split (batch 1), once
    assert summary["test_ppl_best"] == summary["test_ppl_final"] == summary["test_ppl"]


def test_a_checkpoint_without_machines_says_its_earlier_processes_are_unrecorded() -> None:
    from rnnreg.training.state import TrainingProgress

    old = TrainingProgress(step=40, epochs_done=1).state_dict()
    del old["machines"]  # written before the field existed
    progress = TrainingProgress()
    progress.load_state_dict(old)
    progress.note_machine("AMD EPYC, 2 thread(s)")
    assert progress.machines == ["unrecorded", "AMD EPYC, 2 thread(s)"]
    fresh = TrainingProgress()
    fresh.load_state_dict({**old, "step": 0})  # nothing trained before: nothing unrecorded
    fresh.note_machine("AMD EPYC, 2 thread(s)")
    fresh.note_machine("AMD EPYC, 2 thread(s)")
    assert fresh.machines == ["AMD EPYC, 2 thread(s)"]
