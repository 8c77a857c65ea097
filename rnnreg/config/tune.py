"""The schema of ``python -m rnnreg.tune`` (conf/tune.yaml, conf/tune/*.yaml): one study
per variant, every variant given the same trials and the same per-trial budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore

from rnnreg import RnnregError
from rnnreg.config.dropout import coerce_enums

#: The file ``python -m rnnreg.tune`` writes in ``tune.dir`` before any worker starts
#: (rnnreg/cli/tune.py): the folders ``<variant>/trial_NNNN`` beside it are tuning trials,
#: never rows of the report (rnnreg/reporting/data.py ``is_trial``), whatever the storage.
COMPARISON_MARKER = "tune.json"


class Launcher(str, Enum):
    """Where the workers run: processes here, a SLURM job array (submitit), or submitit's
    debug executor, which runs the array's tasks one after another in this process."""

    local = "local"
    slurm = "slurm"
    debug = "debug"


class Pruner(str, Enum):
    """When Optuna stops a trial early, from its validation perplexity per epoch."""

    asha = "asha"  # successive halving, asynchronous (Li et al. 2020)
    hyperband = "hyperband"
    median = "median"  # worse than the median of earlier trials at the same epoch
    none = "none"


@dataclass
class TuneConfig:
    #: The comparison's name: its folder ``<dir>`` and its studies ``<name>-<variant>``.
    name: str = "compare"
    variants: list[str] = field(default_factory=lambda: ["zaremba", "gal"])
    #: Overrides every trial's run config takes (``model=small``); on the command line,
    #: every argument that is not ``tune.*`` or ``hydra.*`` lands here.
    run: list[str] = field(default_factory=list)
    #: Counted trials (complete or pruned) per variant: the same for every variant.
    trials: int = 16
    #: Epochs per trial (``trainer.epochs``): the same for every variant.
    budget: int = 2
    pruner: Pruner = Pruner.asha
    #: No trial is pruned before this many epochs (regularized models start slower).
    min_resource: int = 1
    reduction_factor: int = 3
    #: Seeds the start-up design (scrambled Sobol) and, with each worker's index, that
    #: worker's TPE (multivariate, constant liar): rnnreg/tuning/study.py.
    sampler_seed: int = 1
    #: Points of the start-up design, queued once before any worker starts (at most
    #: ``trials``); TPE's own draws begin after as many trials have completed.
    startup_trials: int = 5
    #: None: Optuna's journal file ``<dir>/journal.log``; or an RDB URL, e.g.
    #: ``postgresql://user@host/db`` (heartbeats, failed trials retried).
    storage: str | None = None
    #: Worker processes on this machine sharing the storage; threads per worker =
    #: cores // workers.
    workers: int = 1
    #: torch threads per worker; 0: cores // workers here, every core an array task has.
    threads: int = 0
    launcher: Launcher = Launcher.local
    #: The SLURM array's tasks (``launcher=slurm``), as the sweeps' conf/hydra/launcher/slurm.yaml.
    slurm_partition: str | None = "${oc.env:RNNREG_SLURM_PARTITION,null}"
    slurm_account: str | None = "${oc.env:RNNREG_SLURM_ACCOUNT,null}"
    slurm_timeout_min: int = 1440
    slurm_gpus: int = 1
    slurm_cpus: int = 8
    slurm_mem_gb: int = 32
    #: Retrain each variant's best configuration with seeds 1..N at ``retrain_epochs``
    #: (None: the run config's ``trainer.epochs``).
    retrain_seeds: int = 0
    retrain_epochs: int | None = None
    #: Check and print the plan (studies, spaces, one trial's run config, the array's
    #: parameters) and run or submit nothing.
    dry_run: bool = False
    dir: str = "${oc.env:RNNREG_OUTPUTS,${rnnreg.root:outputs}}/tune/${tune.name}"

    def __post_init__(self) -> None:
        coerce_enums(self, "tune")
        for name in ("trials", "budget", "min_resource", "workers", "reduction_factor"):
            if int(getattr(self, name)) < 1:
                raise RnnregError(f"tune.{name}={getattr(self, name)} must be at least 1")
        if int(self.threads) < 0:
            raise RnnregError(f"tune.threads={self.threads} must be 0 (cores // workers) or more")
        if self.min_resource > self.budget:
            raise RnnregError(
                f"tune.min_resource={self.min_resource} exceeds tune.budget={self.budget} "
                "epochs: no trial could be pruned; lower it or raise the budget"
            )
        if not self.variants:
            raise RnnregError("tune.variants is empty; name at least one variant")


@dataclass
class TuneApp:
    tune: TuneConfig = field(default_factory=TuneConfig)


def register_tune() -> None:
    ConfigStore.instance().store(name="tune_base", node=TuneApp)
