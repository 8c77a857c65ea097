"""The Hydra entry point: ``python -m rnnreg.train [group=option ...] [key=value ...]``.

Composes ``conf/config.yaml`` over the typed schema, builds the run, trains it and
returns the best validation perplexity (so that sweepers can minimize it).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rnnreg import PROJECT_ROOT, RnnregError, RunInUse, error_exit
from rnnreg.config.schema import (
    CONF_DIR,
    GROUPS,
    RunConfig,
    group_options,
    register,
    to_run_config,
)
from rnnreg.core.malloc import tune_malloc

log = logging.getLogger("rnnreg")


OUTPUTS = PROJECT_ROOT / "outputs"  # conf/config.yaml's default root (or $RNNREG_OUTPUTS)


register()


def check_group_choices(argv: list[str]) -> None:
    """Fail with one line listing the valid options when ``group=option`` names none.

    Runs before Hydra, whose own message spans many lines. Sweep values (``a,b``) are
    checked one by one.
    """
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").removeprefix("override ").strip("/")
        if group not in GROUPS:
            continue
        options = group_options(group)
        for choice in value.split(","):
            choice = choice.strip()
            if choice in ("", "null") and group == "experiment":
                continue
            if choice not in options:
                raise RnnregError(
                    f"unknown {group} {choice!r}; choose one of: {', '.join(options)}"
                )


def check_composes(argv: list[str]) -> None:
    """Compose the config once before Hydra runs, so that a typo gives one clear line.

    Only for a plain run (no Hydra flags such as ``-m`` or ``--cfg``); ``hydra.*``
    overrides are left to Hydra.
    """
    if any(arg.startswith("-") for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as exc:
        what = str(exc).strip().splitlines()[0].rstrip(".")
        cause = exc.__cause__
        detail = str(cause).strip().splitlines()[0] if cause is not None else ""
        raise RnnregError(
            f"{what}{': ' + detail if detail else ''} "
            "(python -m rnnreg.train --cfg job prints every key and its value)"
        ) from None
    to_run_config(cfg)


def check_output_dir(argv: list[str]) -> None:
    """Fail with one line when the run (or sweep) directory cannot be written.

    Hydra creates the directory and writes its ``.hydra/`` files before rnnreg runs, with
    a traceback if it cannot; this probe says the same in one line first. The folder
    checked is ``hydra.run.dir`` / ``hydra.sweep.dir`` when given, else the outputs root.
    """
    key = "hydra.sweep.dir=" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir="
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(key)]
    folder = Path(given[-1]) if given else Path(os.environ.get("RNNREG_OUTPUTS", OUTPUTS))
    probe = folder / f".rnnreg-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RnnregError(
            f"cannot write the output folder {folder} ({exc.strerror or exc}); choose a "
            f"writable {key.rstrip('=')}=<dir> or free disk space"
        ) from None


def threads_per_job(launcher: Any) -> int:
    """Torch threads for one job so that parallel jobs x threads <= cores (0: torch's default).

    Only the joblib launcher runs jobs side by side on this machine; n_jobs <= 0 counts
    back from the number of cores, as joblib does (-1: all of them).
    """
    if "joblib" not in str(launcher.get("_target_", "")):
        return 0
    cores = os.cpu_count() or 1
    jobs = int(launcher.get("n_jobs") or -1)
    if jobs <= 0:
        jobs = max(1, cores + 1 + jobs)
    return max(1, cores // jobs)


def train(
    run: RunConfig,
    run_dir: Path,
    labels: dict[str, Any] | None = None,
    launch: tuple[list[str], str] | None = None,
) -> float:
    """Train ``run`` in ``run_dir``; return its best validation perplexity (inf if none).

    ``launch``: the overrides and composed config to record in ``run_dir/.hydra/`` once
    the run accepts them (:class:`rnnreg.records.launch.LaunchRecord`).
    """
    from rnnreg.records.launch import LaunchRecord
    from rnnreg.training.trainer import Trainer

    record = None if launch is None else LaunchRecord(tuple(launch[0]), launch[1])
    summary = Trainer(run, run_dir, labels=labels, launch=record).fit()
    best = summary["best_val_ppl"]
    return math.inf if best is None else float(best)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra's task function: returns the best validation perplexity, for sweepers."""
    try:
        hydra_cfg = HydraConfig.get()
        run = to_run_config(cfg)
        if run.trainer.threads == 0:
            run.trainer.threads = threads_per_job(hydra_cfg.launcher)
        labels = {"experiment": hydra_cfg.runtime.choices.get("experiment")}
        launch = (list(hydra_cfg.overrides.task), OmegaConf.to_yaml(cfg))
        return train(run, Path(hydra_cfg.runtime.output_dir), labels, launch)
    except RunInUse as exc:
        if hydra_cfg.mode is RunMode.MULTIRUN:  # leave that job to its owner; sweep on
            log.error("skipped: %s", exc)
            return math.nan
        raise SystemExit(error_exit(exc)) from None
    except RnnregError as exc:
        raise SystemExit(error_exit(exc)) from None


def cli() -> None:
    try:
        check_group_choices(sys.argv[1:])
        check_composes(sys.argv[1:])
        check_output_dir(sys.argv[1:])
    except RnnregError as exc:
        raise SystemExit(error_exit(exc)) from None
    tune_malloc()
    main()


if __name__ == "__main__":
    cli()
