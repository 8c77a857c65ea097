"""The logger group: a short run logged to W&B (offline) and to MLflow (SQLite), and one
line naming the extra to install when a tracker's package is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rnnreg import RnnregError
from rnnreg.training.trainer import Trainer


def test_a_short_run_logs_to_wandb_offline(make_config, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = make_config("logger=wandb", "trainer.max_steps=10", "trainer.log_every_steps=5")
    summary = Trainer(run, tmp_path / "run").fit()
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    data = record.read_bytes()
    # the training scalars at their steps, the run's config and the final metrics
    for name in (b"train/ppl", b"val/ppl", b"test/ppl", b"best_val_ppl", b"p_hidden"):
        assert name in data, name
    assert summary["status"] == "completed"
    assert (tmp_path / "run" / "tb").is_dir()  # TensorBoard is written as always


def test_a_short_run_logs_to_mlflow_sqlite(make_config, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = make_config(
        "logger=mlflow",
        f"logger.tracking_uri={store}",
        "trainer.max_steps=10",
        "trainer.log_every_steps=5",
    )
    summary = Trainer(run, tmp_path / "run").fit()
    client = mlflow.tracking.MlflowClient(store)
    (found,) = client.search_runs([client.get_experiment_by_name("rnnreg").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["variant"] == "none"
    history = client.get_metric_history(found.info.run_id, "train/ppl")
    assert [m.step for m in history] == [5, 10]
    assert found.data.metrics["final/test_ppl"] == pytest.approx(summary["test_ppl"])


def test_a_missing_tracker_is_one_line_naming_the_extra(make_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    run = make_config("logger=wandb", "trainer.max_steps=2")
    with pytest.raises(RnnregError, match=r"pip install 'rnnreg\[wandb\]'"):
        Trainer(run, tmp_path / "run").fit()
