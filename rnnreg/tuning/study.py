"""Equal-budget studies on Optuna: every variant gets ``tune.trials`` counted trials of
``tune.budget`` epochs, each a real training run (run dir, summary.json, TensorBoard)
that reports its validation perplexity per epoch; then the best configuration of each is
retrained over ``tune.retrain_seeds`` seeds.

Counting: a trial counts when it completes or is pruned (a diverged run is pruned). The
lowest-numbered ``tune.trials`` trials that have not failed are the study's; a worker
whose new trial falls beyond them marks it failed (``surplus``) and stops, so parallel
workers never run one trial too many. A trial whose worker died (its run directory's
lock free: rnnreg/core/process.py) or that was interrupted (SIGINT, SLURM's SIGUSR2)
is marked failed and retried with the same values, resuming its run directory's
checkpoint: never counted twice, never lost.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from rnnreg import RnnregError, RunInUse
from rnnreg.config.schema import CONF_DIR, to_run_config
from rnnreg.config.tune import Launcher, Pruner, TuneConfig
from rnnreg.core.files import atomic_write_bytes
from rnnreg.core.process import exclusive_run
from rnnreg.tuning.space import Param, load_space

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
#: A RUNNING trial younger than this is starting, not orphaned (its lock not yet taken).
STARTING_S = 120


def make_pruner(t: TuneConfig) -> optuna.pruners.BasePruner:
    if t.pruner is Pruner.asha:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=t.min_resource, reduction_factor=t.reduction_factor
        )
    if t.pruner is Pruner.hyperband:
        return optuna.pruners.HyperbandPruner(
            min_resource=t.min_resource, max_resource=t.budget, reduction_factor=t.reduction_factor
        )
    if t.pruner is Pruner.median:
        # epochs are 1-based steps; the pruner waits while step < n_warmup_steps
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=t.min_resource)
    return optuna.pruners.NopPruner()


def open_storage(t: TuneConfig, folder: Path) -> Any:
    """The journal file in the study's folder, or the RDB of ``tune.storage``."""
    if t.storage is None:
        from optuna.storages.journal import JournalFileBackend

        folder.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    try:
        return optuna.storages.RDBStorage(
            t.storage,
            heartbeat_interval=60,
            grace_period=180,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=3
            ),
        )
    except Exception as exc:  # sqlalchemy's errors, a missing driver: one line either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnregError(
            f"cannot open tune.storage={t.storage} ({first[:200]}); check that the database "
            "is reachable, or leave tune.storage unset for the journal file"
        ) from None


def open_study(t: TuneConfig, variant: str, storage: Any) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(
        seed=t.sampler_seed,
        multivariate=True,
        constant_liar=True,
        n_startup_trials=t.startup_trials,
    )
    return optuna.create_study(
        storage=storage,
        study_name=f"{t.name}-{variant}",
        sampler=sampler,
        pruner=make_pruner(t),
        direction="minimize",
        load_if_exists=True,  # the same command again continues the study
    )


def run_config(
    t: TuneConfig, variant: str, values: dict[str, Any], epochs: int, extra: list[str]
) -> Any:
    overrides = [*t.run, f"variant={variant}", f"trainer.epochs={epochs}", *extra]
    overrides += [f"{key}={value}" for key, value in values.items()]
    try:
        if GlobalHydra.instance().is_initialized():  # inside the Hydra app: its search path
            return to_run_config(compose("config", overrides=overrides))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return to_run_config(compose("config", overrides=overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RnnregError(
            f"a trial's run config does not compose ({first}); check tune.run"
        ) from None


def counted_or_running(study: optuna.Study, below: int | None = None) -> int:
    states = (*COUNTED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for tr in trials if below is None or tr.number < below)


def release_orphans(study: optuna.Study, folder: Path) -> None:
    """Fail and re-queue the RUNNING trials whose worker is gone (their lock is free)."""
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = trial_dir(folder, trial)
        status = run_status(run_dir)
        young = (now - (trial.datetime_start or now)).total_seconds() < STARTING_S
        if status in ("completed", "pruned", "diverged") or (status is None and young):
            continue  # being told, or not yet started
        try:
            with exclusive_run(run_dir):
                pass
        except RunInUse:
            continue  # its worker is alive
        retry(study, trial, "orphaned")


def run_status(run_dir: Path) -> str | None:
    try:
        return str(json.loads((run_dir / "summary.json").read_text()).get("status"))
    except (OSError, ValueError):
        return None


def origin(trial: Any) -> int:
    """The number of the first trial that ``trial`` retries (its own if none): ``run_of``,
    which every trial records as it starts and an RDB heartbeat's retry copies with the
    user attributes, or ``retry_of``, which our re-queued trials carry from the start."""
    attrs = trial.user_attrs
    return int(attrs.get("run_of", attrs.get("retry_of", trial.number)))


def trial_dir(folder: Path, trial: Any) -> Path:
    """The run directory of the trial's :func:`origin`, so that a retry resumes the run."""
    return folder / f"trial_{origin(trial):04d}"


def retry(study: optuna.Study, trial: Any, why: str) -> None:
    """Mark ``trial`` failed (``why``) and queue its values again, to resume its run dir."""
    if trial.state is TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
    first = origin(trial)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": first}, skip_if_exists=False)
    log.warning("trial %d %s: failed, queued again (resumes %s)", trial.number, why, first)


class Surplus(Exception):
    """A trial beyond the study's ``tune.trials``: failed, and this worker stops."""


class Interrupted(Exception):
    """A trial stopped by a signal, checkpointed: failed, queued again, the worker stops."""


def run_trial(
    study: optuna.Study, t: TuneConfig, variant: str, space: list[Param], folder: Path, threads: int
) -> bool:
    """One trial, through ``Study.optimize`` (which keeps an RDB storage's heartbeat);
    False when the study needs no more."""
    from rnnreg.training.trainer import Trainer

    current: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        current.append(trial.number)
        if counted_or_running(study, below=trial.number) >= t.trials:
            raise Surplus
        trial.set_user_attr("run_of", origin(trial))  # a heartbeat's retry inherits it
        values = {param.key: param.suggest(trial) for param in space}
        extra = [f"trainer.threads={threads}", "trainer.auto_resume=true"]
        run = run_config(t, variant, values, t.budget, extra)

        def report(epoch: int, val_ppl: float) -> bool:
            trial.report(val_ppl, epoch)
            return trial.should_prune()

        summary = Trainer(run, trial_dir(folder, trial), epoch_hook=report).fit()
        if summary["status"] in ("pruned", "diverged"):
            trial.set_user_attr("ended", summary["status"])
            raise optuna.TrialPruned
        if summary["status"] != "completed":
            raise Interrupted(summary["status"])
        return float(summary["best_val_ppl"])

    before = len(study.get_trials(deepcopy=False))
    try:
        study.optimize(objective, n_trials=1, catch=(Surplus,))
    except (Interrupted, KeyboardInterrupt) as stop:  # the trainer forwards SIGINT
        trial = study.get_trials(deepcopy=False)[current[0]]
        stop = stop if isinstance(stop, Interrupted) else Interrupted("interrupted")
        retry(study, trial, str(stop))
        raise RnnregError(
            f"tuning {stop}: trial {trial.number} is checkpointed in "
            f"{trial_dir(folder, trial)}; run the same command to go on"
        ) from None
    last = study.get_trials(deepcopy=False)[before:]
    return not any(tr.state is TrialState.FAIL for tr in last)


def tune_variant(
    t: TuneConfig, variant: str, storage: Any, root: Path, threads: int
) -> optuna.Study:
    """Trials of ``variant`` until its study counts ``tune.trials``."""
    space = load_space(variant)
    study = open_study(t, variant, storage)
    folder = root / variant
    release_orphans(study, folder)
    while counted_or_running(study) < t.trials:
        if not run_trial(study, t, variant, space, folder, threads):
            break
    return study


def retrain(
    t: TuneConfig, variant: str, study: optuna.Study, root: Path, worker: int, threads: int
) -> list[Path]:
    """The best configuration of ``variant`` with seeds 1..``retrain_seeds`` (this worker's
    share: seed s goes to worker (s − 1) mod workers) at the full budget. A seed another
    process is training (a second ``tune`` on the same study) is left to it."""
    from rnnreg.training.trainer import Trainer

    done = [tr for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done or t.retrain_seeds < 1:
        return []
    best = min(done, key=lambda tr: tr.value if tr.value is not None else float("inf"))
    dirs = []
    for seed in range(1, t.retrain_seeds + 1):
        run_dir = root / variant / "retrain" / f"seed{seed}"
        dirs.append(run_dir)
        if (seed - 1) % t.workers != worker:
            continue
        extra = [f"seed={seed}", f"trainer.threads={threads}", "trainer.auto_resume=true"]
        epochs = t.retrain_epochs
        base = run_config(t, variant, {}, 1, []) if epochs is None else None
        run = run_config(t, variant, best.params, epochs or base.trainer.epochs, extra)
        try:
            Trainer(run, run_dir).fit()
        except RunInUse:
            log.info("%s: retrained by another worker; left to it", run_dir)
    return dirs


def study_record(t: TuneConfig, study: optuna.Study, retrained: list[Path]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    count = {state.name.lower(): sum(tr.state is state for tr in trials) for state in TrialState}
    complete = [tr for tr in trials if tr.state is TrialState.COMPLETE]
    best = min(complete, key=lambda tr: tr.value) if complete else None
    return {
        "study": study.study_name,
        "trials": t.trials,
        "budget_epochs": t.budget,
        "pruner": t.pruner.value,
        "min_resource": t.min_resource,
        "counted": count["complete"] + count["pruned"],
        "states": {k: v for k, v in count.items() if v},
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_trial": best.number if best else None,
        "importances": importances(study) if len(complete) >= 2 else None,
        "retrain_seeds": t.retrain_seeds,
        "retrain_dirs": [str(d) for d in retrained],
    }


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's fANOVA importances of the complete trials; None where they cannot be had
    (every trial at the same values)."""
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return None
    return {key: float(value) for key, value in found.items()}


def worker_threads(t: TuneConfig, cores: int | None = None) -> int:
    """torch threads per worker: ``tune.threads``, else this machine's cores shared by the
    local workers (an array task has its cores to itself)."""
    if t.threads:
        return t.threads
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else os.cpu_count()
    side_by_side = t.workers if t.launcher is Launcher.local else 1
    return max(1, (cores or 1) // side_by_side)


def work(t: TuneConfig, worker: int = 0) -> dict[str, Any]:
    """One worker: every variant's trials, then its share of the retraining; returns (and
    writes ``<dir>/study.json``) what each study holds."""
    root = Path(t.dir)
    threads = worker_threads(t)
    storage = open_storage(t, root)
    record = {}
    for variant in t.variants:
        study = tune_variant(t, variant, storage, root, threads)
        if counted_or_running(study) < t.trials:
            log.warning(
                "%s: stopped before its %d trials; run the same command to go on", variant, t.trials
            )
            continue
        while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(5)  # the other workers' last trials decide the best configuration
            release_orphans(study, root / variant)
        record[variant] = study_record(t, study, retrain(t, variant, study, root, worker, threads))
    atomic_write_bytes(root / "study.json", (json.dumps(record, indent=2) + "\n").encode())
    return record
