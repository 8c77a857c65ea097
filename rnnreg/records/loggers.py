"""Experiment trackers beside TensorBoard, chosen by the ``logger`` config group.

``tensorboard`` (the default) writes only the run's ``tb/`` events. ``wandb`` adds a
Weights & Biases run, offline by default (``<run dir>/wandb/offline-run-*``, uploaded
later with ``wandb sync`` from a machine that is online); ``mlflow`` adds an MLflow run
in a local SQLite store (``outputs/mlflow.db`` unless ``logger.tracking_uri`` says
otherwise; ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` shows it). Each
tracker is an optional extra, imported only when chosen:
``pip install 'rnnreg[wandb]'`` or ``'rnnreg[mlflow]'``.

A tracker receives what TensorBoard receives: the scalars at their optimizer steps, and
at the end the hyperparameters with the final metrics. A resumed run continues the same
tracker run (its id is kept in the run directory).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Protocol

from rnnreg import RnnregError
from rnnreg.config.schema import LoggerConfig, LoggerName


class Tracker(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _import(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise RnnregError(
            f"logger={extra} needs the {extra} package: pip install 'rnnreg[{extra}]' "
            "(or choose logger=tensorboard)"
        ) from None


def _kept_id(run_dir: Path, name: str) -> Path:
    return run_dir / f".{name}-run-id"


class WandbTracker:
    """A W&B run in ``<run dir>/wandb`` (``logger.mode``: offline by default)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, config: dict) -> None:
        wandb = _import("wandb", "wandb")
        id_file = _kept_id(run_dir, "wandb")
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=cfg.project,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=cfg.mode,
            config=config,
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in ``logger.tracking_uri`` (a local SQLite store by default)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, config: dict) -> None:
        self.mlflow = _import("mlflow", "mlflow")
        client = self.mlflow.tracking.MlflowClient(cfg.tracking_uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
        )
        id_file = _kept_id(run_dir, "mlflow")
        if id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run = client.create_run(experiment_id, run_name=name, tags={"run_dir": str(run_dir)})
            run_id = run.info.run_id
            id_file.write_text(run_id + "\n")
        self.client, self.run_id = client, run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        for key, value in params.items():
            self.client.log_param(self.run_id, key, value)
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, f"final/{key}", float(value))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(cfg: LoggerConfig, run_dir: Path, config: dict) -> Tracker | None:
    """The chosen tracker for ``run_dir``, named after it (None for ``tensorboard``, whose
    events every run writes anyway)."""
    if cfg.name is LoggerName.wandb:
        return WandbTracker(cfg, run_dir, run_dir.name, config)
    if cfg.name is LoggerName.mlflow:
        return MlflowTracker(cfg, run_dir, run_dir.name, config)
    return None
