"""The tuning entry point: ``python -m rnnreg.tune [tune.key=value ...] [run overrides ...]``.

    python -m rnnreg.tune                                   # conf/tune/default.yaml
    python -m rnnreg.tune 'tune.variants=[zaremba,gal]' tune.trials=16 tune.budget=2 \\
        model=small tune.workers=2

A Hydra app over ``conf/tune.yaml`` (schema: rnnreg/config/tune.py); every argument that
is not ``tune…`` or ``hydra…`` is an override of each trial's run config and joins
``tune.run``. Studies live in ``tune.dir`` (journal file by default; ``optuna-dashboard
<dir>/journal.log`` shows them), each trial's run in ``<dir>/<variant>/trial_NNNN``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnreg import RnnregError, error_exit
from rnnreg.config.schema import CONF_DIR, register
from rnnreg.config.tune import COMPARISON_MARKER, Launcher, TuneConfig, register_tune

log = logging.getLogger("rnnreg")

register()
register_tune()


#: Hydra's flags that take the next argument as their value (``--cfg job``); ``--info``
#: takes it only when it names one of its topics.
FLAG_VALUES = {
    "--cfg": None,
    "-c": None,
    "--package": None,
    "-p": None,
    "--config-path": None,
    "-cp": None,
    "--config-name": None,
    "-cn": None,
    "--config-dir": None,
    "-cd": None,
    "--experimental-rerun": None,
    "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
    "-i": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
}


def split_argv(argv: list[str]) -> list[str]:
    """Hydra's arguments (flags with their values), with the run overrides folded into
    ``tune.run=[...]``."""
    ours, run = [], []
    args = iter(argv)
    for arg in args:
        if arg in FLAG_VALUES:
            ours.append(arg)
            topics = FLAG_VALUES[arg]
            following = next(args, None)
            if following is None:
                continue
            if topics is None or following in topics:
                ours.append(following)
            else:
                (ours if following.startswith(TUNE_PREFIXES) else run).append(following)
        elif arg.startswith(TUNE_PREFIXES):
            ours.append(arg)
        else:
            run.append(arg)
    if run:
        quoted = ",".join(f"'{a}'" for a in run)
        ours.append(f"tune.run=[{quoted}]")
    return ours


TUNE_PREFIXES = ("tune", "hydra", "-", "+tune", "~tune", "+hydra", "~hydra")


def check_tune_overrides(argv: list[str]) -> None:
    """Compose ``conf/tune.yaml`` with the ``tune.*`` overrides before Hydra runs, so that a
    typo or a bad value gets one line (exit 2), not Hydra's report; the run overrides'
    group choices are checked as ``rnnreg.train`` checks them."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from rnnreg.cli.train import check_group_choices

    if any(arg.startswith("-") for arg in argv):
        return  # --cfg, --help, -m ...: Hydra's to answer
    overrides = [a for a in argv if a.lstrip("+~").startswith("tune")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("tune", overrides=overrides)
    except HydraException as exc:
        what = str(exc).strip().splitlines()[0].rstrip(".")
        raise RnnregError(
            f"{what} (python -m rnnreg.tune --cfg job prints every tune key)"
        ) from None
    check_group_choices(list(tune_config(cfg).run))


def tune_config(cfg: DictConfig) -> TuneConfig:
    try:
        t = OmegaConf.to_object(cfg.tune)
    except OmegaConfBaseException as exc:
        raise RnnregError(f"invalid tune setting: {str(exc).splitlines()[0]}") from None
    assert isinstance(t, TuneConfig)
    return t


def _worker(t: Any, index: int) -> None:
    from rnnreg.tuning.study import work

    work(t, index)


def run(t: TuneConfig) -> dict[str, Any]:
    """Every study of the comparison, with ``tune.workers`` processes."""
    from rnnreg.tuning.space import load_space
    from rnnreg.tuning.study import enqueue_startup_design, open_storage, run_config, work

    for variant in t.variants:  # bad input fails here, before any worker starts
        load_space(variant)
        run_config(t, variant, {}, t.budget, [])
    storage = open_storage(t, Path(t.dir)) if t.storage or not t.dry_run else None
    if t.dry_run:  # a dry run starts no journal; a database URL is checked
        return plan(t)
    mark_comparison(t)
    for variant in t.variants:  # drawn once, here, before any worker asks for a trial
        queued = enqueue_startup_design(t, variant, storage)
        if queued:
            log.info("%s: start-up design of %d Sobol points queued", variant, queued)
    if t.launcher is not Launcher.local:
        return submit_array(t)
    if t.workers == 1:
        return work(t, 0)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(t, i)) for i in range(1, t.workers)]
    for process in workers:
        process.start()
    try:
        return work(t, 0)
    finally:
        for process in workers:
            process.join()


def mark_comparison(t: TuneConfig) -> None:
    """Write ``<tune.dir>/tune.json``: the comparison's settings, and the sign that its
    ``<variant>/trial_NNNN`` folders are tuning trials."""
    from rnnreg.core.files import atomic_write_bytes

    settings = OmegaConf.to_container(OmegaConf.structured(t), resolve=True, enum_to_str=True)
    text = json.dumps({"tune": settings}, indent=2, default=str) + "\n"
    atomic_write_bytes(Path(t.dir) / COMPARISON_MARKER, text.encode())


def array_parameters(t: TuneConfig) -> dict[str, Any]:
    """What each task of the submitit array asks of SLURM."""
    return {
        "name": f"rnnreg-tune-{t.name}",
        "timeout_min": t.slurm_timeout_min,
        "slurm_partition": t.slurm_partition,
        "slurm_account": t.slurm_account,
        "gpus_per_node": t.slurm_gpus,
        "cpus_per_task": t.slurm_cpus,
        "mem_gb": t.slurm_mem_gb,
        "slurm_array_parallelism": t.workers,
        "slurm_signal_delay_s": 120,
    }


def plan(t: TuneConfig) -> dict[str, Any]:
    """``tune.dry_run``: what the command would run, checked (every space loads, every
    variant's trial config composes, the storage opens), with nothing trained or submitted."""
    from rnnreg.tuning.space import load_space
    from rnnreg.tuning.study import retrain_epochs, retrain_seeds, run_config, worker_threads

    if t.launcher is Launcher.slurm and t.storage is None:
        raise RnnregError(NEEDS_STORAGE)
    studies = {}
    for variant in t.variants:
        space = load_space(variant)
        run = run_config(t, variant, {}, t.budget, [])
        seeds = retrain_seeds(t, run.seed)
        studies[f"{t.name}-{variant}"] = {
            "space": {p.key: _span(p) for p in space},
            "model": f"{run.model.hidden_size} units x {run.model.num_layers} layers",
            "device": run.trainer.device.value,
            "trials": t.trials,
            "budget_epochs": t.budget,
            "startup_design": f"{min(t.startup_trials, t.trials)} scrambled Sobol points",
            "trial_seed": run.seed,
            "retrain": f"{len(seeds)} seeds x {retrain_epochs(t, variant)} epochs",
            "retrain_seeds": seeds,
        }
    workers = {"launcher": t.launcher.value, "workers": t.workers}
    if t.launcher is Launcher.local:
        workers["threads_per_worker"] = worker_threads(t)
    else:
        workers["array"] = array_parameters(t)
    return {
        "dry_run": True,
        "dir": t.dir,
        "storage": t.storage or f"{t.dir}/journal.log",
        "workers": workers,
        "studies": studies,
    }


def _span(param: Any) -> str:
    if param.choices is not None:
        return "one of " + ", ".join(map(str, param.choices))
    return f"{param.low} to {param.high}{', log' if param.log else ''}"


NEEDS_STORAGE = (
    "tune.launcher=slurm needs tune.storage=postgresql://... shared by the array's "
    "nodes (the journal file is for workers on one machine)"
)


def submit_array(t: TuneConfig) -> dict[str, Any]:
    """``tune.workers`` tasks of a submitit job array, each a worker on the shared storage
    (a SLURM array needs ``tune.storage``: the journal file is for one machine)."""
    import submitit

    from rnnreg.tuning.study import work

    if t.launcher is Launcher.slurm and t.storage is None:
        raise RnnregError(NEEDS_STORAGE)
    executor = submitit.AutoExecutor(folder=Path(t.dir) / "submitit", cluster=t.launcher.value)
    executor.update_parameters(**array_parameters(t))
    jobs = executor.map_array(work, [t] * t.workers, list(range(t.workers)))
    log.info("submitted %d workers: %s", len(jobs), ", ".join(str(j.job_id) for j in jobs))
    if t.launcher is Launcher.slurm:  # the array runs on: watch <dir>/study.json, the report
        return {"submitted": [str(job.job_id) for job in jobs]}
    return [job.result() for job in jobs][-1]


@hydra.main(config_path=str(CONF_DIR), config_name="tune", version_base="1.3")
def app(cfg: DictConfig) -> float:
    try:
        record = run(tune_config(cfg))
    except RnnregError as exc:  # one line, not Hydra's report of an exception
        raise SystemExit(error_exit(exc)) from None
    print(json.dumps(record, indent=2))
    best = [r["best_value"] for r in record.values() if isinstance(r, dict) and r.get("best_value")]
    return min(best) if best else float("inf")


def main() -> int:
    argv = split_argv(sys.argv[1:])
    try:
        check_tune_overrides(argv)
    except RnnregError as exc:
        raise SystemExit(error_exit(exc)) from None
    sys.argv = [sys.argv[0], *argv]
    app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
