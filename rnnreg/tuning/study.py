"""Equal-budget studies on Optuna: every variant gets ``tune.trials`` counted trials of
``tune.budget`` epochs, each a real training run (run dir, summary.json, TensorBoard)
that reports its validation perplexity per epoch (trials never score the test split);
then the chosen configuration of each is retrained over ``tune.retrain_seeds`` seeds.

Sampling: the start-up design (``tune.startup_trials`` points of a scrambled Sobol
sequence seeded by ``tune.sampler_seed``) is enqueued once, into a study with no trials,
before any worker starts (:func:`enqueue_startup_design`); after it each worker's TPE has
its own seed, derived from ``tune.sampler_seed``, the worker's index and the trials the
study held when the worker opened it (:func:`worker_seed`): parallel or restarted workers
never replay each other's draws, and a draw equal to a trial already run is refused
(:class:`Duplicate`) while the space has points left.

Counting: a trial counts when it completes or is pruned (a diverged run is pruned). The
lowest-numbered ``tune.trials`` trials that have not failed are the study's; a worker
whose new trial falls beyond them marks it failed (``surplus``). A trial whose worker died
(its run directory's lock free: rnnreg/core/process.py) or that was interrupted (SIGINT,
SLURM's SIGUSR2) is marked failed and queued again with the same values, resuming its run
directory's checkpoint: never counted twice, never lost. A worker runs queued trials
before it asks for new ones, and a study is complete only when exactly ``tune.trials``
trials are counted (:func:`tune_variant`).

Choosing: the chosen trial is a function of the complete study alone (:func:`chosen_trial`:
the best value among the counted trials, ties to the lowest number), so every worker
retrains the same configuration without a lock; it is recorded in the study's user
attributes (``chosen``). Retrain seeds never include the trials' seed (:func:`retrain_seeds`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from rnnreg import RnnregError, RunInUse
from rnnreg.config.schema import CONF_DIR, to_run_config
from rnnreg.config.tune import Launcher, Pruner, TuneConfig
from rnnreg.core.files import atomic_write_bytes
from rnnreg.core.process import exclusive_run
from rnnreg.tuning.space import Param, load_space, space_points, unit_to_values

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
#: A RUNNING trial younger than this is starting, not orphaned (its lock not yet taken).
STARTING_S = 120
#: How often a worker whose study waits on other workers' trials looks again (seconds).
POLL_S = 5.0


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


def worker_seed(t: TuneConfig, worker: int, generation: int) -> int:
    """The TPE seed of worker ``worker`` opening a study that holds ``generation`` trials:
    numpy's SeedSequence of the three, so that no two workers, and no restart of one,
    draw from the same stream."""
    import numpy as np

    entropy = [int(t.sampler_seed), int(worker), int(generation)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def sampler_arguments(t: TuneConfig, seed: int | None) -> dict[str, Any]:
    """Every argument of a worker's TPE sampler (study.json records them)."""
    return {
        "seed": seed,
        "multivariate": True,
        "constant_liar": True,
        "n_startup_trials": t.startup_trials,
    }


def open_study(
    t: TuneConfig, variant: str, storage: Any, worker: int | None = None
) -> optuna.Study:
    """The study of ``variant``; with ``worker``, sampling with that worker's own TPE
    seed (:func:`worker_seed`), recorded in the study's user attributes."""
    name = f"{t.name}-{variant}"
    seed = None
    if worker is not None:
        generation = len(storage_trials(storage, name))
        seed = worker_seed(t, worker, generation)
    sampler = optuna.samplers.TPESampler(**sampler_arguments(t, seed))
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler,
        pruner=make_pruner(t),
        direction="minimize",
        load_if_exists=True,  # the same command again continues the study
    )
    if worker is not None:
        study.set_user_attr(f"sampler_seed.worker{worker}.at{generation}", seed)
    return study


def storage_trials(storage: Any, name: str) -> list[Any]:
    """The trials of study ``name`` in ``storage`` (none when it does not exist yet)."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def enqueue_startup_design(t: TuneConfig, variant: str, storage: Any) -> int:
    """Queue the start-up design into ``variant``'s study when it has no trials yet: the
    first ``min(startup_trials, trials)`` points of a scrambled Sobol sequence seeded by
    ``tune.sampler_seed``, mapped onto the space (:func:`rnnreg.tuning.space.unit_to_values`).
    Returns how many were queued (0 for a study already started: a rerun continues it)."""
    study = open_study(t, variant, storage)
    if study.get_trials(deepcopy=False):
        return 0
    space = load_space(variant)
    count = min(t.startup_trials, t.trials)
    for values in startup_design(space, count, t.sampler_seed):
        study.enqueue_trial(values, user_attrs={"design": "sobol"}, skip_if_exists=False)
    study.set_user_attr("startup_design", {"kind": "scrambled Sobol", "points": count})
    return count


def startup_design(space: list[Param], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` points of a scrambled Sobol sequence (scipy) over ``space``: the first
    ``count`` of 2^⌈log2 count⌉ points, as the sequence is built in powers of two."""
    if count < 1 or not space:
        return []
    from scipy.stats import qmc

    sobol = qmc.Sobol(d=len(space), scramble=True, seed=seed)
    points = sobol.random_base2(m=max(0, math.ceil(math.log2(count))))[:count]
    return [unit_to_values(space, [float(u) for u in point]) for point in points]


def run_config(
    t: TuneConfig,
    variant: str,
    values: dict[str, Any],
    epochs: int | None,
    extra: list[str],
) -> Any:
    """A trial's or a retrained run's config: ``tune.run``, the variant, ``epochs`` (None:
    as composed), ``extra`` and the tuned ``values``."""
    overrides = [*t.run, f"variant={variant}", *extra]
    if epochs is not None:
        overrides.append(f"trainer.epochs={epochs}")
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


def retrain_epochs(t: TuneConfig, variant: str) -> int:
    """``tune.retrain_epochs``, else ``trainer.epochs`` as ``tune.run`` composes it."""
    if t.retrain_epochs is not None:
        return int(t.retrain_epochs)
    return int(run_config(t, variant, {}, None, []).trainer.epochs)


def retrain_seeds(t: TuneConfig, trial_seed: int) -> list[int]:
    """The ``tune.retrain_seeds`` seeds of the retrained runs: the first positive integers
    other than ``trial_seed``, the seed every trial ran with, so that no retrained run
    repeats the selected trial (its selection bias included)."""
    seeds: list[int] = []
    candidate = 1
    while len(seeds) < t.retrain_seeds:
        if candidate != trial_seed:
            seeds.append(candidate)
        candidate += 1
    return seeds


def by_state(study: optuna.Study, *states: TrialState) -> list[Any]:
    return study.get_trials(deepcopy=False, states=states)


def counted_or_running(study: optuna.Study, below: int | None = None) -> int:
    trials = by_state(study, *COUNTED, TrialState.RUNNING)
    return sum(1 for tr in trials if below is None or tr.number < below)


def counted_trials(study: optuna.Study, trials: int) -> list[Any]:
    """The study's counted trials: the lowest-numbered ``trials`` complete or pruned."""
    return sorted(by_state(study, *COUNTED), key=lambda tr: tr.number)[:trials]


def chosen_trial(study: optuna.Study, trials: int) -> Any | None:
    """The configuration to retrain, a function of the complete study alone: among its
    counted trials, the lowest value, ties to the lowest number; None before the study has
    counted ``trials`` or when none completed."""
    counted = counted_trials(study, trials)
    if len(counted) < trials:
        return None
    complete = [tr for tr in counted if tr.state is TrialState.COMPLETE and tr.value is not None]
    return min(complete, key=lambda tr: (tr.value, tr.number)) if complete else None


def release_orphans(study: optuna.Study, folder: Path) -> None:
    """Fail and re-queue the RUNNING trials whose worker is gone: their run directory's
    lock is free, and it was taken since the trial started, or the trial is older than
    :data:`STARTING_S` (a trial that has not reached its trainer yet is starting, even in
    the folder of the killed trial it retries)."""
    now = datetime.datetime.now()
    for trial in by_state(study, TrialState.RUNNING):
        run_dir = trial_dir(folder, trial)
        if run_status(run_dir) in ("completed", "pruned", "diverged"):
            continue  # being told
        started = trial.datetime_start or now
        young = (now - started).total_seconds() < STARTING_S
        if young and not locked_since(run_dir, started):
            continue  # starting
        try:
            with exclusive_run(run_dir):
                pass
        except RunInUse:
            continue  # its worker is alive
        retry(study, trial, "orphaned")


def locked_since(run_dir: Path, start: datetime.datetime) -> bool:
    """Whether a process took ``run_dir``'s lock at or after ``start`` (the lock file is
    rewritten by every holder as it takes the lock: rnnreg/core/process.py)."""
    try:
        taken = datetime.datetime.fromtimestamp((run_dir / ".lock").stat().st_mtime)
    except OSError:
        return False
    return taken >= start


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


def retry(study: optuna.Study, trial: Any, why: str) -> bool:
    """Mark ``trial`` failed (``why``) and queue its values again, to resume its run dir.
    False, queueing nothing, when another worker failed it first (it queued the copy)."""
    if trial.state is TrialState.RUNNING:
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            return False  # told by another worker between our read and our tell
    first = origin(trial)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": first}, skip_if_exists=False)
    log.warning("trial %d %s: failed, queued again (resumes %s)", trial.number, why, first)
    return True


class Surplus(Exception):
    """A trial beyond the study's ``tune.trials``: failed, not counted."""


class Duplicate(Exception):
    """A fresh draw equal to a trial already run or running: failed, not counted."""


class Interrupted(Exception):
    """A trial stopped by a signal, checkpointed: failed, queued again, the worker stops."""


def is_duplicate(study: optuna.Study, trial: optuna.Trial, space: list[Param]) -> bool:
    """Whether ``trial`` (not a retry) drew the values of another live or counted trial
    while the space still has points no trial holds."""
    if "retry_of" in trial.user_attrs:
        return False
    others = [
        tr.params
        for tr in by_state(study, *COUNTED, TrialState.RUNNING, TrialState.WAITING)
        if tr.number != trial.number
    ]
    distinct = {json.dumps(p, sort_keys=True, default=str) for p in others}
    return trial.params in others and len(distinct) < space_points(space)


def objective_for(
    study: optuna.Study,
    t: TuneConfig,
    variant: str,
    space: list[Param],
    folder: Path,
    threads: int,
    current: list[int],
):
    """The objective of one trial: its run at ``tune.budget`` epochs, validation only."""
    from rnnreg.training.trainer import Trainer

    def objective(trial: optuna.Trial) -> float:
        current.append(trial.number)
        if counted_or_running(study, below=trial.number) >= t.trials:
            raise Surplus
        values = {param.key: param.suggest(trial) for param in space}
        if is_duplicate(study, trial, space):
            raise Duplicate
        trial.set_user_attr("run_of", origin(trial))  # a heartbeat's retry inherits it
        extra = [f"trainer.threads={threads}", "trainer.auto_resume=true"]
        run = run_config(t, variant, values, t.budget, extra)

        def report(epoch: int, val_ppl: float) -> bool:
            trial.report(val_ppl, epoch)
            return trial.should_prune()

        trainer = Trainer(run, trial_dir(folder, trial), epoch_hook=report, score_test=False)
        summary = trainer.fit()
        if summary["status"] in ("pruned", "diverged"):
            trial.set_user_attr("ended", summary["status"])
            raise optuna.TrialPruned
        if summary["status"] != "completed":
            raise Interrupted(summary["status"])
        return float(summary["best_val_ppl"])

    return objective


def run_trial(
    study: optuna.Study, t: TuneConfig, variant: str, space: list[Param], folder: Path, threads: int
) -> None:
    """One trial (a queued one first), through ``Study.optimize``, which keeps an RDB
    storage's heartbeat. A surplus or duplicate draw is failed and not counted."""
    current: list[int] = []
    objective = objective_for(study, t, variant, space, folder, threads, current)
    try:
        study.optimize(objective, n_trials=1, catch=(Surplus, Duplicate))
    except (Interrupted, KeyboardInterrupt) as stop:  # the trainer forwards SIGINT
        trial = study.get_trials(deepcopy=False)[current[0]]
        stop = stop if isinstance(stop, Interrupted) else Interrupted("interrupted")
        retry(study, trial, str(stop))
        raise RnnregError(
            f"tuning {stop}: trial {trial.number} is checkpointed in "
            f"{trial_dir(folder, trial)}; run the same command to go on"
        ) from None


def tune_variant(
    t: TuneConfig, variant: str, storage: Any, root: Path, threads: int, worker: int = 0
) -> optuna.Study:
    """Trials of ``variant`` until its study counts exactly ``tune.trials``: queued trials
    (the start-up design, retries of killed ones) first, new draws while the counted and
    running trials fall short, else waiting on the other workers' running trials, whose
    orphans are failed and queued again."""
    space = load_space(variant)
    study = open_study(t, variant, storage, worker)
    folder = root / variant
    while True:
        release_orphans(study, folder)
        counted = len(counted_trials(study, t.trials))
        if counted >= t.trials:
            return study
        waiting = by_state(study, TrialState.WAITING)
        if waiting or counted_or_running(study) < t.trials:
            run_trial(study, t, variant, space, folder, threads)
        else:
            time.sleep(POLL_S)  # the other workers' last trials decide the configuration


def retrain(
    t: TuneConfig, variant: str, study: optuna.Study, root: Path, worker: int, threads: int
) -> list[Path]:
    """The chosen configuration of ``variant`` (:func:`chosen_trial`) with the
    :func:`retrain_seeds` at :func:`retrain_epochs`: this worker's share first (the i-th
    seed goes to worker i mod workers), then any seed left unfinished by a worker that is
    gone. A seed another process is training is left to it (its run directory's lock)."""
    chosen = chosen_trial(study, t.trials)
    if chosen is None or t.retrain_seeds < 1:
        return []
    epochs = retrain_epochs(t, variant)
    trial_seed = int(run_config(t, variant, {}, None, []).seed)
    seeds = retrain_seeds(t, trial_seed)
    dirs = [root / variant / "retrain" / f"seed{seed}" for seed in seeds]
    mine = [i for i in range(len(seeds)) if i % t.workers == worker]
    for index in mine + [i for i in range(len(seeds)) if i not in mine]:
        if index not in mine and run_status(dirs[index]) == "completed":
            continue
        extra = [f"seed={seeds[index]}", f"trainer.threads={threads}", "trainer.auto_resume=true"]
        retrain_one(run_config(t, variant, chosen.params, epochs, extra), dirs[index])
    return dirs


def retrain_one(run: Any, run_dir: Path) -> None:
    """Train one retrained seed to the end, unless another process holds it."""
    from rnnreg.training.trainer import Trainer

    try:
        Trainer(run, run_dir).fit()
    except RunInUse:
        log.info("%s: retrained by another worker; left to it", run_dir)


def record_choice(study: optuna.Study, t: TuneConfig) -> Any | None:
    """Record the :func:`chosen_trial` in the study's user attributes (the same value from
    every worker, so no lock is needed) and return it."""
    chosen = chosen_trial(study, t.trials)
    if chosen is not None:
        choice = {"trial": chosen.number, "value": chosen.value, "params": chosen.params}
        if study.user_attrs.get("chosen") != choice:
            study.set_user_attr("chosen", choice)
    return chosen


def study_record(
    t: TuneConfig, variant: str, study: optuna.Study, retrained: list[Path]
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    count = {state.name.lower(): sum(tr.state is state for tr in trials) for state in TrialState}
    counted = counted_trials(study, t.trials)
    chosen = chosen_trial(study, t.trials)
    complete = [tr for tr in counted if tr.state is TrialState.COMPLETE]
    attrs = study.user_attrs
    trial_seed = int(run_config(t, variant, {}, None, []).seed)
    return {
        "study": study.study_name,
        "trials": t.trials,
        "budget_epochs": t.budget,
        "pruner": t.pruner.value,
        "min_resource": t.min_resource,
        "counted": len(counted),
        "states": {k: v for k, v in count.items() if v},
        "best_value": chosen.value if chosen else None,
        "best_params": chosen.params if chosen else None,
        "best_trial": chosen.number if chosen else None,
        "importances": importances(study) if len(complete) >= 2 else None,
        "sampler": {
            "class": "TPESampler",
            **sampler_arguments(t, None),
            "seed": "SeedSequence([tune.sampler_seed, worker, trials at opening])",
            "sampler_seed": t.sampler_seed,
            "worker_seeds": {k: v for k, v in attrs.items() if k.startswith("sampler_seed.")},
            "startup_design": attrs.get("startup_design"),
        },
        "trial_seed": trial_seed,
        "retrain_seeds": t.retrain_seeds,
        "retrain_seed_values": retrain_seeds(t, trial_seed),
        "retrain_dirs": [str(d) for d in retrained],
    }


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's importances of the complete trials; None where they cannot be had (every
    trial at the same values)."""
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
        study = tune_variant(t, variant, storage, root, threads, worker)
        record_choice(study, t)
        retrained = retrain(t, variant, study, root, worker, threads)
        record[variant] = study_record(t, variant, study, retrained)
    atomic_write_bytes(root / "study.json", (json.dumps(record, indent=2) + "\n").encode())
    return record
