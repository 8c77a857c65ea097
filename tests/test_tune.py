"""python -m rnnreg.tune: search spaces, pruning, and workers sharing one study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # a bare GPU machine may lack it

from optuna.trial import TrialState  # noqa: E402

from rnnreg import RnnregError  # noqa: E402
from rnnreg.config.tune import Launcher, Pruner, TuneConfig  # noqa: E402
from rnnreg.reporting.tuning import trial_values  # noqa: E402
from rnnreg.tuning.space import load_space  # noqa: E402
from rnnreg.tuning.study import (  # noqa: E402
    make_pruner,
    open_storage,
    open_study,
    origin,
    run_status,
    trial_dir,
    worker_threads,
)

TINY = [
    "model.embedding_size=16",
    "model.hidden_size=16",
    "model.compile=false",
    "trainer.batch_size=4",
    "trainer.bptt=8",
    "eval.batch_size=4",
    "eval.test_batch_size=4",
    "trainer.device=cpu",
]


def test_every_variant_space_loads_and_says_where_its_ranges_come_from(tmp_path: Path) -> None:
    from rnnreg.config.schema import group_options
    from rnnreg.tuning.space import SPACE_DIR

    for variant in group_options("variant"):  # awd, weight_drop, gal_untied included
        assert load_space(variant)
        header = [line for line in (SPACE_DIR / f"{variant}.yaml").read_text().splitlines()]
        comment = " ".join(line for line in header if line.startswith("#"))
        assert "range" in comment.lower() or "as conf/tune/space/" in comment, variant
    (tmp_path / "typo.yaml").write_text("variant.p_inptu: {low: 0.0, high: 0.5}\n")
    with pytest.raises(RnnregError, match="unknown key 'variant.p_inptu'"):
        load_space("typo", tmp_path)
    (tmp_path / "rate.yaml").write_text("variant.p_input: {low: 0.2, high: 1.0}\n")
    with pytest.raises(RnnregError, match=r"drop rate range inside \[0, 1\)"):
        load_space("rate", tmp_path)
    with pytest.raises(RnnregError, match="no search space for 'nope'"):
        load_space("nope", tmp_path)


@pytest.mark.parametrize("pruner", [Pruner.median, Pruner.asha])
def test_a_trial_worse_at_min_resource_is_pruned_and_a_better_one_is_not(
    tmp_path: Path, pruner: Pruner
) -> None:
    """Fake curves: six trials at 100 − epoch; one at 300 is pruned at epoch 2 (min_resource),
    never at epoch 1; one at 50 runs to the end."""
    t = TuneConfig(
        name="fake",
        trials=8,
        budget=4,
        pruner=pruner,
        min_resource=2,
        reduction_factor=2,
        dir=str(tmp_path),
    )
    study = open_study(t, "none", open_storage(t, tmp_path))

    def curve(level: float):
        def objective(trial: optuna.Trial) -> float:
            for epoch in range(1, t.budget + 1):
                trial.report(level - epoch, epoch)
                if trial.should_prune():
                    trial.set_user_attr("pruned_at", epoch)
                    raise optuna.TrialPruned
            return level - t.budget

        return objective

    for _ in range(6):
        study.optimize(curve(100.0), n_trials=1)
    study.optimize(curve(300.0), n_trials=1)
    study.optimize(curve(50.0), n_trials=1)
    worse, better = study.trials[-2], study.trials[-1]
    assert worse.state is TrialState.PRUNED and worse.user_attrs["pruned_at"] == 2
    assert better.state is TrialState.COMPLETE


def test_pruning_off_prunes_nothing(tmp_path: Path) -> None:
    t = TuneConfig(name="off", pruner=Pruner.none, budget=3, dir=str(tmp_path))
    assert isinstance(make_pruner(t), optuna.pruners.NopPruner)


def test_bad_tune_settings_get_one_line() -> None:
    with pytest.raises(RnnregError, match="tune.min_resource=5 exceeds tune.budget=2"):
        TuneConfig(min_resource=5, budget=2)
    with pytest.raises(RnnregError, match="tune.workers=0 must be at least 1"):
        TuneConfig(workers=0)


def tune_env(tmp_path: Path, tiny_data: Path) -> dict[str, str]:
    env = dict(os.environ, RNNREG_DATA_DIR=str(tiny_data), RNNREG_CACHE_DIR=str(tmp_path / "c"))
    return env | {"RNNREG_OUTPUTS": str(tmp_path / "out")}


def tune(tmp_path: Path, tiny_data: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rnnreg.tune", *args, *TINY]
    env = tune_env(tmp_path, tiny_data)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)


def signal_first_trial(
    tmp_path: Path, tiny_data: Path, args: list[str], name: str, how: str
) -> tuple[int, str, Path]:
    """Start ``rnnreg.tune``, send ``how`` to its process group once its first trial has
    checkpointed; its exit code, its stderr and that trial's run directory."""
    import signal
    import time

    command = [sys.executable, "-m", "rnnreg.tune", *args, *TINY]
    worker = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=tune_env(tmp_path, tiny_data),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = tmp_path / "out" / "tune" / name / "zaremba" / "trial_0000"
    deadline = time.monotonic() + 120
    while not (first / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(worker.pid, getattr(signal, how))
    _, err = worker.communicate(timeout=120)
    return worker.returncode, err, first


@pytest.mark.slow
def test_two_workers_share_the_journal_and_run_exactly_the_trials(
    tmp_path: Path, tiny_data: Path
) -> None:
    args = [
        "tune.name=two",
        "tune.variants=[zaremba]",
        "tune.trials=5",
        "tune.budget=2",
        "tune.pruner=median",
        "tune.workers=2",
        "tune.startup_trials=2",
        "tune.retrain_seeds=2",
        "tune.retrain_epochs=1",
        "trainer.max_steps=40",
    ]
    result = tune(tmp_path, tiny_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ExperimentalWarning" not in result.stderr  # the journal needs no experimental API
    root = tmp_path / "out" / "tune" / "two"
    t = TuneConfig(name="two", dir=str(root))
    study = open_study(t, "zaremba", open_storage(t, root))
    counted = [tr for tr in study.trials if tr.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 5  # exact, whatever the two workers raced for
    dirs = {tr.number for tr in counted}
    assert len(dirs) == 5 and all(
        (root / "zaremba" / f"trial_{n:04d}" / "summary.json").is_file() for n in dirs
    )
    record = json.loads((root / "study.json").read_text())["zaremba"]
    assert record["counted"] == 5 and record["budget_epochs"] == 2 and record["trials"] == 5
    assert record["trial_seed"] == 1 and record["retrain_seed_values"] == [2, 3]
    for seed in (2, 3):  # the chosen configuration, retrained by one worker or the other
        summary = json.loads(
            (root / "zaremba" / "retrain" / f"seed{seed}" / "summary.json").read_text()
        )
        assert summary["status"] == "completed" and summary["seed"] == seed
        for key, value in record["best_params"].items():
            section, name = key.split(".")
            assert summary["config"][section][name] == pytest.approx(value)
    from rnnreg.reporting.report import build_report

    markdown = build_report(root).read_text()
    section = markdown.split("## Tuned at an equal budget: `two`")[1]
    assert "| zaremba | 5 of 5 (" in section and "| 2 epochs, median |" in section
    assert "| 2 of 2, 40 steps |" in section  # both retrained seeds, and their budget
    assert "*budget-limited: 40 steps;" in section
    assert "trial_0" not in markdown.split("## Tuned")[0]  # trials are not rows
    assert (root / "report" / "figures" / "tuning_two.png").is_file()
    assert (root / "report" / "figures" / "tuned_two.png").is_file()
    tried = trial_values(root, "zaremba", sorted(record["best_params"]))
    assert len(tried) == 5 and all(len(tr["values"]) == len(record["best_params"]) for tr in tried)
    best = next(tr for tr in tried if tr["number"] == record["best_trial"])
    assert best["values"] == pytest.approx(record["best_params"])
    again = tune(tmp_path, tiny_data, *args)  # the same command: the study is complete
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(open_study(t, "zaremba", open_storage(t, root)).trials) == len(study.trials)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_worker_killed_mid_trial_is_retried_never_counted(
    tmp_path: Path, tiny_data: Path, how: str
) -> None:
    """SIGKILL: the next run finds the trial orphaned (its run lock free). SIGINT (Ctrl-C):
    the trial checkpoints, is failed and queued again, the worker says so in one line."""

    args = [
        "tune.name=kill",
        "tune.variants=[zaremba]",
        "tune.trials=2",
        "tune.budget=2",
        "tune.pruner=none",
        "tune.retrain_seeds=0",
        "trainer.checkpoint_every_s=0.5",
    ]
    code, err, first = signal_first_trial(tmp_path, tiny_data, args, "kill", how)
    if how == "SIGKILL":
        assert run_status(first) == "running"  # killed inside its first trial
    else:
        assert code == 2 and run_status(first) == "interrupted"
        lines = [line for line in err.splitlines() if line.startswith("rnnreg: error:")]
        assert len(lines) == 1 and "checkpointed" in lines[0], err[-2000:]
    result = tune(tmp_path, tiny_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "out" / "tune" / "kill"
    t = TuneConfig(name="kill", dir=str(root))
    trials = open_study(t, "zaremba", open_storage(t, root)).trials
    assert trials[0].state is TrialState.FAIL  # the killed one: never complete
    retried = [tr for tr in trials if tr.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state is TrialState.COMPLETE
    assert retried[0].params == trials[0].params
    assert sum(tr.state is TrialState.COMPLETE for tr in trials) == 2
    assert run_status(first) == "completed"  # the retry finished the killed trial's run


def postgres_bin() -> Path | None:
    """The server's programs: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on a free local port, started and stopped here (as the
    ``postgres`` user when run as root: the server refuses root)."""
    import pwd
    import shutil
    import socket
    import tempfile

    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.fail("no PostgreSQL server found: make test installs Debian's postgresql")
    folder = Path(tempfile.mkdtemp(prefix="rnnreg-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "rnnreg")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(folder / "log"),
        "-w",
        "start",
    )
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "rnnreg", "tune")
        yield f"postgresql://rnnreg@127.0.0.1:{port}/tune"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgres_and_one_killed_mid_trial(
    tmp_path: Path, tiny_data: Path, postgres_url: str
) -> None:
    """Two workers share a real PostgreSQL study: exactly the trials asked for. Then a
    worker SIGKILLed inside a trial: the next run fails that trial and retries it."""

    args = [
        "tune.name=pg",
        "tune.variants=[zaremba]",
        "tune.trials=4",
        "tune.budget=2",
        "tune.pruner=median",
        "tune.workers=2",
        "tune.startup_trials=2",
        f"tune.storage={postgres_url}",
        "trainer.max_steps=40",
    ]
    result = tune(tmp_path, tiny_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    t = TuneConfig(name="pg", dir=str(tmp_path / "out" / "tune" / "pg"), storage=postgres_url)
    study = open_study(t, "zaremba", open_storage(t, Path(t.dir)))
    counted = [tr for tr in study.trials if tr.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 4 and len({tr.number for tr in counted}) == 4

    kill_args = [a.replace("tune.name=pg", "tune.name=pgkill") for a in args]
    kill_args = [a for a in kill_args if not a.startswith(("tune.workers", "trainer.max_steps"))]
    kill_args += ["tune.trials=2", "tune.pruner=none", "trainer.checkpoint_every_s=0.5"]
    signal_first_trial(tmp_path, tiny_data, kill_args, "pgkill", "SIGKILL")
    result = tune(tmp_path, tiny_data, *kill_args)
    assert result.returncode == 0, result.stderr[-3000:]
    k = TuneConfig(
        name="pgkill", dir=str(tmp_path / "out" / "tune" / "pgkill"), storage=postgres_url
    )
    trials = open_study(k, "zaremba", open_storage(k, Path(k.dir))).trials
    assert trials[0].state is TrialState.FAIL
    assert sum(tr.state is TrialState.COMPLETE for tr in trials) == 2
    assert [tr.user_attrs.get("retry_of") for tr in trials].count(0) == 1


@pytest.mark.slow
def test_a_simulated_slurm_array_of_workers_fills_the_study(
    tmp_path: Path, tiny_data: Path
) -> None:
    """tune.launcher=debug: submitit's debug executor runs the array's two tasks."""
    args = [
        "tune.name=array",
        "tune.variants=[zaremba]",
        "tune.trials=3",
        "tune.budget=1",
        "tune.pruner=none",
        "tune.workers=2",
        "tune.launcher=debug",
        "tune.retrain_seeds=0",
        "trainer.max_steps=20",
    ]
    result = tune(tmp_path, tiny_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "out" / "tune" / "array"
    t = TuneConfig(name="array", dir=str(root))
    trials = open_study(t, "zaremba", open_storage(t, root)).trials
    assert sum(tr.state is TrialState.COMPLETE for tr in trials) == 3
    assert (root / "submitit").is_dir()
    refused = tune(tmp_path, tiny_data, *args[:-3], "tune.launcher=slurm")
    assert refused.returncode == 2 and "needs tune.storage=postgresql" in refused.stderr


def test_threads_per_worker_share_the_cores_unless_set() -> None:
    assert worker_threads(TuneConfig(workers=2), cores=16) == 8
    assert worker_threads(TuneConfig(workers=4), cores=2) == 1
    assert worker_threads(TuneConfig(workers=4, launcher=Launcher.slurm), cores=8) == 8
    assert worker_threads(TuneConfig(workers=1, threads=1), cores=2) == 1
    with pytest.raises(RnnregError, match="tune.threads=-1"):
        TuneConfig(threads=-1)


def test_a_dry_run_checks_and_prints_the_plan_and_runs_nothing(
    tmp_path: Path, tiny_data: Path
) -> None:
    """make tune-paper TUNE_ARGS=tune.dry_run=true: every variant composed at its size, the
    array's parameters, and no journal, trial or submission."""
    args = [
        "tune.name=plan",
        "tune.variants=[zaremba,zoneout]",
        "tune.workers=8",
        "tune.launcher=slurm",
        "tune.slurm_partition=gpu",
        "tune.storage=sqlite:///" + str(tmp_path / "plan.db"),
        "tune.dry_run=true",
        "tune.retrain_epochs=null",
    ]
    result = tune(tmp_path, tiny_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(plan["studies"]) == {"plan-zaremba", "plan-zoneout"}
    assert plan["studies"]["plan-zoneout"]["model"] == "16 units x 2 layers"
    assert "variant.zoneout_cell" in plan["studies"]["plan-zoneout"]["space"]
    # tune.retrain_epochs unset: trainer.epochs as tune.run composes it, as retrain() runs it
    assert plan["studies"]["plan-zaremba"]["retrain"] == "3 seeds x 13 epochs"
    assert plan["studies"]["plan-zaremba"]["retrain_seeds"] == [2, 3, 4]  # not the trials' 1
    assert plan["workers"]["array"]["slurm_partition"] == "gpu"
    assert plan["workers"]["array"]["slurm_array_parallelism"] == 8
    root = tmp_path / "out" / "tune" / "plan"
    assert not (root / "journal.log").exists() and not (root / "submitit").exists()
    assert not list(root.glob("*/trial_*"))
    refused = tune(tmp_path, tiny_data, *[a for a in args if "storage" not in a])
    assert refused.returncode == 2 and "needs tune.storage=postgresql" in refused.stderr


def test_a_retrain_seed_another_worker_holds_is_left_to_it(tmp_path: Path, tiny_data: Path) -> None:
    """A second ``tune`` on the same study skips the seed the first one is training (its
    run directory is locked) instead of failing, and trains the rest."""
    from optuna.distributions import FloatDistribution

    from rnnreg.core.process import exclusive_run
    from rnnreg.tuning.study import retrain

    data = [f"dataset.data_dir={tiny_data}", f"dataset.cache_dir={tmp_path / 'c'}"]
    run = [*TINY, *data, "trainer.max_steps=5"]
    t = TuneConfig(name="held", dir=str(tmp_path / "held"), run=run, trials=1, retrain_seeds=2)
    study = open_study(t, "zaremba", open_storage(t, Path(t.dir)))
    rate = FloatDistribution(0.0, 0.7)
    study.add_trial(
        optuna.trial.create_trial(
            params={"variant.p_input": 0.1}, distributions={"variant.p_input": rate}, value=9.0
        )
    )
    held = Path(t.dir) / "zaremba" / "retrain" / "seed2"  # seed 1 is the trials' own
    with exclusive_run(held):
        dirs = retrain(t, "zaremba", study, Path(t.dir), worker=0, threads=1)
    assert [d.name for d in dirs] == ["seed2", "seed3"]
    assert not (held / "summary.json").exists()
    summary = json.loads((dirs[1] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 3
    assert summary["config"]["variant"]["p_input"] == pytest.approx(0.1)


def test_a_heartbeat_retry_resumes_the_run_directory_of_the_trial_it_retries(
    tmp_path: Path,
) -> None:
    """Optuna's heartbeat callback re-queues a stale trial with its user attributes; the
    ``run_of`` each trial records as it starts sends the retry to the first run's folder."""
    study = optuna.create_study()
    first = study.ask()
    first.set_user_attr("run_of", origin(first))  # as run_trial's objective does
    stale = study.trials[0]
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # Optuna marks it experimental
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    callback(study, stale)
    study.tell(first, state=TrialState.FAIL)
    again = study.ask()
    assert again.number == 1 and origin(again) == 0
    assert trial_dir(tmp_path, again) == tmp_path / "trial_0000"
    assert trial_dir(tmp_path, study.ask()) == tmp_path / "trial_0002"  # a fresh trial: its own


def fake_trials(study: optuna.Study, space: list, count: int) -> list[dict]:
    """Ask and complete ``count`` trials on ``study`` with a made-up value."""
    drawn = []
    for _ in range(count):
        trial = study.ask()
        values = {param.key: param.suggest(trial) for param in space}
        study.tell(trial, sum(float(v) for v in values.values()))
        drawn.append(values)
    return drawn


def test_parallel_and_restarted_workers_never_draw_the_same_configuration(tmp_path: Path) -> None:
    """The start-up design is queued once (a second call queues nothing); three workers'
    samplers, each seeded from its index, draw three different configurations, during
    TPE's random start-up and after it; a worker opened again draws none already drawn."""
    from rnnreg.tuning.study import enqueue_startup_design

    t = TuneConfig(name="par", trials=12, startup_trials=3, dir=str(tmp_path))
    storage = open_storage(t, tmp_path)
    space = load_space("zaremba")
    assert enqueue_startup_design(t, "zaremba", storage) == 3
    assert enqueue_startup_design(t, "zaremba", storage) == 0  # a rerun continues the study
    queued = open_study(t, "zaremba", storage).get_trials(states=(TrialState.WAITING,))
    assert len(queued) == 3
    drawn = fake_trials(open_study(t, "zaremba", storage, worker=0), space, 3)  # the design
    workers = [open_study(t, "zaremba", storage, worker=w) for w in range(3)]
    for _ in range(2):  # TPE's start-up (random) draws, then TPE's own
        asked = [study.ask() for study in workers]
        values = [{p.key: p.suggest(trial) for p in space} for trial in asked]
        for study, trial in zip(workers, asked, strict=True):
            study.tell(trial, 1.0)
        drawn += values
    restarted = open_study(t, "zaremba", storage, worker=1)  # worker 1 again
    drawn += fake_trials(restarted, space, 2)
    keys = [json.dumps(v, sort_keys=True) for v in drawn]
    assert len(set(keys)) == len(keys) == 11
    seeds = {k: v for k, v in restarted.user_attrs.items() if k.startswith("sampler_seed.")}
    # workers 0-2 opened at 3 trials (worker 0 twice: it drew nothing in between, as
    # every draw adds a trial), worker 1 again at 9: four seeds, all different
    assert len(set(seeds.values())) == len(seeds) == 4


def test_the_startup_design_maps_sobol_points_into_every_kind_of_range() -> None:
    from rnnreg.tuning.space import Param, space_points, unit_to_values
    from rnnreg.tuning.study import startup_design

    space = [
        Param("optim.lr", 0.3, 2.0, log=True),
        Param("variant.p_input", 0.0, 0.7, step=0.1),
        Param("trainer.bptt", 10, 40, step=10),
        Param("optim.name", choices=("sgd", "ntasgd")),
    ]
    points = startup_design(space, 5, seed=7)
    assert len(points) == 5 and points == startup_design(space, 5, seed=7)
    for values in points:
        assert 0.3 <= values["optim.lr"] <= 2.0
        assert round(values["variant.p_input"] * 10, 9).is_integer()
        assert values["trainer.bptt"] in (10, 20, 30, 40)
        assert values["optim.name"] in ("sgd", "ntasgd")
    assert unit_to_values(space, [0.0, 0.0, 0.0, 0.0])["optim.lr"] == pytest.approx(0.3)
    assert unit_to_values(space, [0.999, 0.999, 0.999, 0.999])["trainer.bptt"] == 40
    assert space_points(space[1:]) == 8 * 4 * 2


def test_the_chosen_trial_is_the_best_counted_one_ties_to_the_lowest_number(
    tmp_path: Path,
) -> None:
    """A function of the complete study: None before it counts ``trials``; a pruned trial
    counts but is never chosen; equal values go to the lower number; a trial beyond the
    counted ones is not considered."""
    from rnnreg.tuning.study import chosen_trial, record_choice

    t = TuneConfig(name="choose", trials=4, dir=str(tmp_path))
    study = open_study(t, "zaremba", open_storage(t, tmp_path))
    rate = optuna.distributions.FloatDistribution(0.0, 0.7)

    def add(value: float | None, state: TrialState = TrialState.COMPLETE) -> None:
        params = {"variant.p_input": len(study.trials) / 10}
        frozen = optuna.trial.create_trial(
            params=params, distributions={"variant.p_input": rate}, value=value, state=state
        )
        study.add_trial(frozen)

    add(5.0)
    add(3.0)
    add(None, TrialState.PRUNED)
    assert chosen_trial(study, t.trials) is None  # three of four counted
    add(3.0)  # a tie with trial 1
    add(1.0)  # a fifth: beyond the counted four
    chosen = record_choice(study, t)
    assert chosen.number == 1 and chosen.value == 3.0
    assert study.user_attrs["chosen"]["trial"] == 1


def test_retrain_seeds_leave_out_the_trials_seed_and_epochs_follow_tune_run() -> None:
    from rnnreg.tuning.study import retrain_epochs, retrain_seeds

    t = TuneConfig(retrain_seeds=3, run=["model=small"])
    assert retrain_seeds(t, trial_seed=1) == [2, 3, 4]
    assert retrain_seeds(t, trial_seed=3) == [1, 2, 4]
    assert retrain_epochs(t, "zaremba") == 13  # conf/config.yaml's trainer.epochs, not 1
    assert retrain_epochs(TuneConfig(run=["trainer.epochs=7"]), "gal") == 7
    assert retrain_epochs(TuneConfig(retrain_epochs=2), "gal") == 2


def test_a_second_worker_failing_the_same_orphan_queues_no_second_copy(tmp_path: Path) -> None:
    """Two workers see the same orphan: the second tell is refused, and only the first
    queues the retry (before: 'Cannot tell a FAIL trial' killed the second worker)."""
    from rnnreg.tuning.study import retry

    t = TuneConfig(name="orphan", dir=str(tmp_path))
    storage = open_storage(t, tmp_path)
    study = open_study(t, "zaremba", storage)
    trial = study.ask()
    trial.suggest_float("variant.p_input", 0.0, 0.7)
    seen = study.trials[0]  # both workers read it RUNNING
    assert retry(study, seen, "orphaned") is True
    assert retry(open_study(t, "zaremba", storage), seen, "orphaned") is False
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0


def test_tune_cli_takes_hydra_flags_with_values_and_bad_keys_get_one_line(
    tmp_path: Path, tiny_data: Path
) -> None:
    from rnnreg.cli.tune import split_argv

    assert split_argv(["--cfg", "job", "model=small"]) == [
        "--cfg",
        "job",
        "tune.run=['model=small']",
    ]
    assert split_argv(["--info", "model=small"]) == ["--info", "tune.run=['model=small']"]
    shown = tune(tmp_path, tiny_data, "--cfg", "job")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "trials:" in shown.stdout and "job" not in shown.stdout.split("run:")[1][:200]
    for bad, says in (
        ("tune.space.x=1", "tune.space"),
        ("tune.trials=0", "tune.trials=0 must be at least 1"),
        ("tune.pruner=sometimes", "tune.pruner"),
    ):
        result = tune(tmp_path, tiny_data, bad)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith("rnnreg: error:") and says in lines[0]
    refused = tune(tmp_path, tiny_data, "variant=nope")
    assert refused.returncode == 2 and "unknown variant 'nope'" in refused.stderr


def kill_a_worker_then_restart_one(
    tmp_path: Path, tiny_data: Path, args: list[str], name: str
) -> tuple[int, list[subprocess.CompletedProcess]]:
    """Start ``rnnreg.tune`` with 3 workers, each pausing 2 s at its first validation;
    SIGKILL a spawned worker inside its trial; start one more worker on the same study;
    return the killed trial's number and both commands' results."""
    import signal
    import time

    env = tune_env(tmp_path, tiny_data) | {
        "RNNREG_TEST_PAUSE": "validation:1",
        "RNNREG_TEST_PAUSE_S": "2",
        "RNNREG_TEST_MARKER": str(tmp_path / "paused"),
    }
    command = [sys.executable, "-m", "rnnreg.tune", *args, *TINY]
    main = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    folder = tmp_path / "out" / "tune" / name / "zaremba"
    killed, deadline = -1, time.monotonic() + 180
    while killed < 0 and time.monotonic() < deadline:
        for lock in folder.glob("trial_*/.lock"):
            pid = int((lock.read_text().split() or ["0"])[-1])
            if pid not in (0, main.pid) and run_status(lock.parent) == "running":
                os.kill(pid, signal.SIGKILL)
                killed = int(lock.parent.name.split("_")[1])
                break
        time.sleep(0.05)
    assert killed >= 0, "no spawned worker was seen inside a trial"
    restarted = subprocess.run(
        [*command[: -len(TINY)], "tune.workers=1", *TINY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, err = main.communicate(timeout=600)
    first = subprocess.CompletedProcess(command, main.returncode, out, err)
    return killed, [first, restarted]


def check_fair_study(root: Path, t: TuneConfig, killed: int) -> None:
    """Exactly ``trials`` counted, no two with the same values but a retried copy, the
    killed trial retried, one chosen configuration retrained with seeds other than the
    trials', and no trial scoring the test split."""
    study = open_study(t, "zaremba", open_storage(t, root))
    counted = [tr for tr in study.trials if tr.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == t.trials
    origins = [origin(tr) for tr in counted]
    assert len(set(origins)) == len(origins)  # a retry replaces its trial
    values = [json.dumps(tr.params, sort_keys=True) for tr in counted]
    assert len(set(values)) == len(values), values
    failed = [origin(tr) for tr in study.trials if tr.state is TrialState.FAIL]
    assert killed in failed and killed in origins  # failed, and run again to the end
    chosen = study.user_attrs["chosen"]
    best = min(
        (tr for tr in counted if tr.state is TrialState.COMPLETE),
        key=lambda tr: (tr.value, tr.number),
    )
    assert chosen["trial"] == best.number
    record = json.loads((root / "study.json").read_text())["zaremba"]
    assert record["best_trial"] == best.number and record["counted"] == t.trials
    assert 1 not in record["retrain_seed_values"]
    retrained = [
        json.loads((root / "zaremba" / "retrain" / f"seed{s}" / "summary.json").read_text())
        for s in record["retrain_seed_values"]
    ]
    assert {r["seed"] for r in retrained} == set(record["retrain_seed_values"])
    for summary in retrained:
        assert summary["status"] == "completed"
        for key, value in chosen["params"].items():
            section, name = key.split(".")
            assert summary["config"][section][name] == pytest.approx(value)
    for tr in counted:
        summary = json.loads(
            (root / "zaremba" / f"trial_{origin(tr):04d}" / "summary.json").read_text()
        )
        assert summary["test_ppl"] is None and summary.get("test_scored") is False


FAIR = [
    "tune.variants=[zaremba]",
    "tune.trials=6",
    "tune.budget=1",
    "tune.pruner=none",
    "tune.workers=3",
    "tune.startup_trials=3",
    "tune.retrain_seeds=3",
    "tune.retrain_epochs=1",
    "trainer.max_steps=12",
    "trainer.checkpoint_every_s=0",
]


@pytest.mark.slow
def test_three_workers_on_the_journal_one_killed_keep_the_budget_exact(
    tmp_path: Path, tiny_data: Path
) -> None:
    killed, results = kill_a_worker_then_restart_one(
        tmp_path, tiny_data, ["tune.name=fair", *FAIR], "fair"
    )
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "out" / "tune" / "fair"
    check_fair_study(root, TuneConfig(name="fair", trials=6, dir=str(root)), killed)


@pytest.mark.slow
def test_three_workers_on_postgres_one_killed_keep_the_budget_exact(
    tmp_path: Path, tiny_data: Path, postgres_url: str
) -> None:
    args = ["tune.name=pgfair", f"tune.storage={postgres_url}", *FAIR]
    killed, results = kill_a_worker_then_restart_one(tmp_path, tiny_data, args, "pgfair")
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "out" / "tune" / "pgfair"
    t = TuneConfig(name="pgfair", trials=6, dir=str(root), storage=postgres_url)
    check_fair_study(root, t, killed)
