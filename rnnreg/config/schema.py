"""Typed configuration schemas, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` are merged into these dataclasses, so a key that
does not exist (a typo) or a value of the wrong type fails at start-up, and the
range checks in ``__post_init__`` run when :func:`to_run_config` turns the
composed config into objects.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnreg import PROJECT_ROOT, RnnregError
from rnnreg.config.dropout import (
    Cell,
    GateMasks,
    Granularity,
    LayerDropout,
    LSTMPath,
    check_rate,
    coerce_enums,
    is_rate,
)
from rnnreg.config.plugins import plugins


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Progress(str, Enum):
    """``auto`` shows tqdm bars only when stderr is a terminal."""

    auto = "auto"
    bar = "bar"
    log = "log"


def _check_positive(owner: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RnnregError(f"{owner}.{name}={value} must be {bound}")


@dataclass
class DatasetConfig:
    """Where a corpus lives on disk and where to fetch it when it does not."""

    name: str = MISSING
    #: Root holding ``<subdir>/<files>``; default ``$RNNREG_DATA_DIR`` or ``<repo>/data``.
    data_dir: str = "${oc.env:RNNREG_DATA_DIR,${rnnreg.root:data}}"
    #: Tokenized-corpus cache (a data_dir may be read-only, as ``../shared/data`` is).
    cache_dir: str = "${oc.env:RNNREG_CACHE_DIR,${rnnreg.root:data/cache}}"
    subdir: str = MISSING
    #: File name of a split; ``{split}`` is one of train, valid, test.
    file_pattern: str = MISSING
    #: Hugging Face fallback for users who are online.
    hf_path: str = MISSING
    hf_name: str | None = None
    hf_revision: str | None = None
    hf_column: str = MISSING
    #: Hugging Face split names for train, valid, test.
    hf_splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])

    def __post_init__(self) -> None:
        # Record absolute paths: a relative $RNNREG_DATA_DIR means "from where I ran it".
        # (Unresolved interpolations are left alone: they are resolved first.)
        if "${" not in self.data_dir and self.data_dir != MISSING:
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())
        if "${" not in self.cache_dir and self.cache_dir != MISSING:
            self.cache_dir = str(Path(self.cache_dir).expanduser().resolve())


class CompileMode(str, Enum):
    """``torch.compile``'s mode for the loop path: ``reduce-overhead`` replays CUDA graphs
    (a GPU only), ``max-autotune`` also searches kernel configurations (slow to compile)."""

    default = "default"
    reduce_overhead = "reduce-overhead"
    max_autotune = "max-autotune"


class Precision(str, Enum):
    """The arithmetic of every matrix product, both LSTM paths alike (rnnreg/core/precision.py):
    ``fp32`` strict IEEE fp32 (the papers'; TF32 off for cuDNN and for matrix products),
    ``tf32`` TF32 products on GPUs that have it, ``bf16`` autocast to bfloat16 with the
    hand-written backward's accumulations in fp32."""

    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class InitScheme(str, Enum):
    """``uniform``: every parameter, biases included, from U(-init_range, init_range)
    (Zaremba, Gal). ``awd``: embedding and decoder weight from U(-init_range, init_range),
    decoder bias 0, each LSTM's parameters from U(-1/sqrt(H), 1/sqrt(H)) (AWD-LSTM)."""

    uniform = "uniform"
    awd = "awd"


@dataclass
class ModelConfig:
    """An embedding, a stack of single-layer LSTMs and a linear decoder."""

    name: str = MISSING
    vocab_size: int | None = None  # taken from the corpus; set only to assert it
    embedding_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    #: Output size of the last layer (AWD-LSTM: the embedding size, for tying); null: hidden.
    last_hidden_size: int | None = None
    init_scheme: InitScheme = InitScheme.uniform
    init_range: float = 0.1
    tie_weights: bool = False
    #: The recurrent cell: ``lstm``, or ``gru`` (nn.GRU's parameters and gates; Moon's
    #: memory mask and zoneout_cell are refused, as a GRU has no memory cell).
    cell: Cell = Cell.lstm
    #: How each LSTM layer runs: ``fused`` (nn.LSTM/cuDNN), ``loop`` (masks inside the
    #: step), or ``auto``: fused unless the variant masks inside the recurrence.
    lstm_impl: LSTMPath = LSTMPath.auto
    #: Compile the loop path's forward and hand-written backward with torch.compile:
    #: ~40 s on a CPU, then 0.99-1.04x instead of 0.81-0.89x of the fused speed at medium
    #: size (scripts/bench.py); on a GPU it fuses the step's many small kernels.
    #: Training and evaluation alike, in blocks of ``compile_block`` steps, so that no
    #: window length (variable BPTT, a short last window) compiles anew.
    #: Turn off to debug, or for runs of a few minutes.
    compile: bool = True
    compile_mode: CompileMode = CompileMode.default
    #: Steps per compiled block of the loop; a window's remainder runs in blocks of 5, then
    #: single steps. null: the training window, ``trainer.bptt`` (one block per window).
    compile_block: int | None = None

    def __post_init__(self) -> None:
        coerce_enums(self, "model")
        for name in ("embedding_size", "hidden_size", "num_layers"):
            _check_positive("model", name, getattr(self, name))
        if self.compile_block is not None:
            _check_positive("model", "compile_block", self.compile_block)
        _check_positive("model", "init_range", self.init_range, allow_zero=True)
        if self.tie_weights and self.embedding_size != self.output_size:
            raise RnnregError(
                "model.tie_weights=true needs the last layer's output size "
                f"({self.output_size}) to equal model.embedding_size ({self.embedding_size}); "
                "set model.last_hidden_size"
            )

    @property
    def output_size(self) -> int:
        """The size of the last layer's output, which enters the decoder."""
        return self.last_hidden_size or self.hidden_size


@dataclass
class VariantConfig(LayerDropout):
    """Which masks go where, at which rate and granularity (docs/variants.md).

    The in-layer settings (z_h, Moon, Semeniuta, zoneout, weight-drop) are inherited from
    :class:`rnnreg.config.dropout.LayerDropout`; these are the masks outside the layers.
    Rates are named by what they drop:

    - ``p_embedding``: word types (every occurrence of a dropped word), one mask over the
      vocabulary per forward pass (``embedding_granularity=batch``, AWD-LSTM) or per
      batch row and BPTT window (``sequence``, Gal's Lua code);
    - ``p_input``: the embedding output entering layer 1; ``p_between``: each layer's
      output entering the next; ``p_output``: the last output entering the decoder
      (granularity ``activation_granularity``: Zaremba ``step``, Gal/AWD ``sequence``);
      ``gate_masks=untied`` gives each gate its own z_h and, on the layer inputs, its
      own z_x (applied inside the layers).
    """

    name: str = "none"
    p_embedding: float = 0.0
    embedding_granularity: Granularity = Granularity.batch
    p_input: float = 0.0
    p_between: float = 0.0
    p_output: float = 0.0
    activation_granularity: Granularity = Granularity.step
    gate_masks: GateMasks = GateMasks.tied
    #: Activation regularization, α · mean(h_t²) on the dropped output of the last layer.
    ar_alpha: float = 0.0
    #: Temporal activation regularization, β · mean((h_t - h_{t-1})²) on its undropped output.
    tar_beta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("variant", "ar_alpha", self.ar_alpha, allow_zero=True)
        _check_positive("variant", "tar_beta", self.tar_beta, allow_zero=True)

    def rates(self) -> dict[str, float]:
        """Every rate by name (``p_*``, zoneout), for summaries and HParams."""
        return {f.name: getattr(self, f.name) for f in fields(self) if is_rate(f.name)}


class Schedule(str, Enum):
    step = "step"
    plateau = "plateau"


class Averaging(str, Enum):
    """``nonmonotone``: NT-ASGD, SGD until validation stops improving, then averaged SGD."""

    off = "off"
    nonmonotone = "nonmonotone"


@dataclass
class OptimConfig:
    """SGD with Zaremba's schedule: lr_e = lr / lr_decay_factor^max(0, e - decay_after_epoch).

    ``e`` counts epochs from 1, so the first ``decay_after_epoch`` epochs run at ``lr``.
    The Lua code of Zaremba et al. and Gal (``if epoch > max_epoch then lr = lr / decay``,
    tested after each epoch) keeps the full rate for ``max_epoch + 1`` epochs: the presets
    set ``decay_after_epoch = max_epoch + 1``. TensorFlow's ptb_word_lm decays one epoch
    earlier (``decay_after_epoch = max_epoch``).
    ``schedule=plateau`` divides by ``lr_decay_factor`` when validation stalls instead.
    """

    name: str = "sgd"
    lr: float = 1.0
    schedule: Schedule = Schedule.step
    lr_decay_factor: float = 1.0
    decay_after_epoch: int = 0
    plateau_patience: int = 0
    #: Clip the global gradient norm to this value; 0 disables clipping.
    clip_grad_norm: float = 5.0
    weight_decay: float = 0.0
    #: NT-ASGD: switch to averaged SGD when the validation loss is worse than the best of
    #: the evaluations before the last ``nonmono``; averaged weights are then evaluated.
    averaging: Averaging = Averaging.off
    nonmono: int = 5
    #: Sum the per-step batch-mean loss over the BPTT steps (the papers' convention),
    #: i.e. backpropagate ``bptt x`` the token-mean cross-entropy.
    loss_sum_over_time: bool = True

    def __post_init__(self) -> None:
        coerce_enums(self, "optim")
        _check_positive("optim", "lr", self.lr)
        if self.lr_decay_factor < 1.0:
            raise RnnregError(
                f"optim.lr_decay_factor={self.lr_decay_factor} must be >= 1 "
                "(the learning rate is divided by it)"
            )
        _check_positive("optim", "clip_grad_norm", self.clip_grad_norm, allow_zero=True)
        _check_positive("optim", "weight_decay", self.weight_decay, allow_zero=True)


class Objective(str, Enum):
    """The training objective (rnnreg/training/objective.py): the cross-entropy alone, or a
    second pass of the window with a penalty on the scores' difference: fraternal dropout
    (``fd``), expectation-linear dropout (``eld``), the Π-model (``pi``)."""

    none = "none"
    fd = "fd"
    eld = "eld"
    pi = "pi"


@dataclass
class ObjectiveConfig:
    """``objective=none|fd|eld|pi``, composable with any variant; ``kappa`` weighs the
    penalty κ · mean((s¹ − s²)²) on the pre-softmax scores of the two passes."""

    name: Objective = Objective.none
    kappa: float = 0.0

    def __post_init__(self) -> None:
        coerce_enums(self, "objective")
        _check_positive("objective", "kappa", self.kappa, allow_zero=True)

    @property
    def two_pass(self) -> bool:
        return self.name is not Objective.none


class Stage(str, Enum):
    """``finetune``: restart averaged SGD from ``trainer.init_from``'s best weights (AWD)."""

    train = "train"
    finetune = "finetune"


#: TrainerConfig settings that say how a run is executed, not what it computes: a resume
#: may change them (rnnreg/training/resume.py) and a ledger row's command leaves them out.
EXECUTION_SETTINGS = (
    "resume",
    "auto_resume",
    "progress",
    "threads",
    "device",
    "log_every_steps",
    "checkpoint_every_s",
)


# Every key of the resolved config is one of three kinds, said here and nowhere else:
# - neither: how a run was executed or which run of a series it is (EXECUTION_SETTINGS,
#   NOT_OUTCOME_KEYS);
# - evaluation: how the trained weights are evaluated once training ends
#   (EVALUATION_SETTINGS);
# - training: every other key, the trained configuration a report groups runs by.

#: Keys of the resolved config, beside :data:`EXECUTION_SETTINGS`, that say how a run was
#: executed or which run of a series it is, not what it computes: where the files lie, the
#: LSTM path and its compiling (the same equations, rnnreg/model/lstm.py), the trackers,
#: the seed and a fine-tune's source run.
NOT_OUTCOME_KEYS = (
    "seed",
    "trainer.init_from",
    "dataset.data_dir",
    "dataset.cache_dir",
    "model.lstm_impl",
    "model.compile",
    "model.compile_mode",
    "model.compile_block",
    "logger",
)

#: The settings of the evaluations that end a run (rnnreg/evaluation/final.py), each with
#: the evaluations whose perplexity it decides. They are not the trained configuration: a
#: report shows one configuration's evaluations as sub-rows of its group
#: (rnnreg/reporting/data.py), and a resume may change them (rnnreg/training/resume.py).
#: ``eval.bptt`` decides no number (the state is carried; only speed), nor do
#: ``eval.mc_replicas_per_pass``, ``eval.uncertainty`` (calibration measured beside), the
#: switches of the cache and dynamic evaluations (their sub-row exists or not) and their
#: grids (rescore's search). The most specific name of a key decides.
#: ``eval.batch_size`` is training's: validation picks the best epoch and the decay.
EVALUATION_SETTINGS: dict[str, tuple[str, ...]] = {
    "eval.test_weights": ("standard", "mc", "cache", "dynamic"),
    "eval.test_batch_size": ("standard", "mc"),
    "eval.bptt": (),
    "eval.mc_samples": ("mc",),
    "eval.mc_mask_draw": ("mc",),
    "eval.mc_embedding_dropout": ("mc",),
    "eval.mc_replicas_per_pass": (),
    "eval.uncertainty": (),
    "eval.cache": ("cache",),
    "eval.cache.enabled": (),
    "eval.cache.theta_grid": (),
    "eval.cache.interpolation_grid": (),
    "eval.dynamic": ("dynamic",),
    "eval.dynamic.enabled": (),
    "eval.dynamic.lr_grid": (),
    "eval.dynamic.decay_grid": (),
    "eval.dynamic.grid_tokens": (),
}


def _under(key: str, names: Any) -> bool:
    """Whether the dotted ``key`` is one of ``names`` or lies under one."""
    return any(key == name or key.startswith(f"{name}.") for name in names)


def is_evaluation_key(key: str) -> bool:
    """Whether ``key`` is an evaluation setting (:data:`EVALUATION_SETTINGS`)."""
    return _under(key, EVALUATION_SETTINGS)


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"section.key": value}`` (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_settings(value, f"{dotted}.")
        else:
            flat[dotted] = value
    return flat


def outcome_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's numbers: the resolved ``config`` as dotted keys,
    without ``trainer.<EXECUTION_SETTINGS>`` and :data:`NOT_OUTCOME_KEYS`."""
    left_out = (*NOT_OUTCOME_KEYS, *(f"trainer.{name}" for name in EXECUTION_SETTINGS))
    return {key: value for key, value in flat_settings(config).items() if not _under(key, left_out)}


def training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The trained configuration: :func:`outcome_settings` without the evaluation settings."""
    return {k: v for k, v in outcome_settings(config).items() if not is_evaluation_key(k)}


def evaluations_decided(key: str) -> tuple[str, ...]:
    """The evaluations whose numbers ``key`` decides: its most specific entry of
    :data:`EVALUATION_SETTINGS` (none for a training key)."""
    names = [name for name in EVALUATION_SETTINGS if _under(key, (name,))]
    return EVALUATION_SETTINGS[max(names, key=len)] if names else ()


def evaluation_settings(config: dict[str, Any], evaluation: str) -> dict[str, Any]:
    """The settings that decide the numbers of ``evaluation`` (``standard``, ``mc``,
    ``cache``, ``dynamic``) of a run (:data:`EVALUATION_SETTINGS`)."""
    flat = flat_settings(config).items()
    return {key: value for key, value in flat if evaluation in evaluations_decided(key)}


@dataclass
class TrainerConfig:
    epochs: int = 13
    #: Stop after this many optimizer steps (still evaluate and write everything).
    max_steps: int | None = None
    batch_size: int = 20
    bptt: int = 20
    #: AWD-LSTM's variable BPTT: base = bptt w.p. 0.95 else bptt/2, length =
    #: max(5, int(N(base, 5))) (truncated, as AWD's main.py), the step's learning rate
    #: scaled by length / bptt.
    variable_bptt: bool = False
    stage: Stage = Stage.train
    #: The run directory whose best weights a fine-tuning stage starts from.
    init_from: str | None = None
    device: Device = Device.auto
    #: The arithmetic of the run (see :class:`Precision`); recorded in summary.json.
    precision: Precision = Precision.fp32
    #: Continue the run found in the run directory (``hydra.run.dir=<dir>``).
    resume: bool = False
    #: Continue the run directory's checkpoint if there is one, else start anew (sweeps,
    #: requeued SLURM jobs).
    auto_resume: bool = False
    #: torch intra-op threads; 0 keeps torch's default.
    threads: int = 0
    #: Also checkpoint inside an epoch at most this often (seconds; 0: epoch ends only).
    checkpoint_every_s: float = 600.0
    log_every_steps: int = 200
    progress: Progress = Progress.auto

    def __post_init__(self) -> None:
        coerce_enums(self, "trainer")
        for name in ("epochs", "batch_size", "bptt"):
            _check_positive("trainer", name, getattr(self, name))
        if self.max_steps is not None:
            _check_positive("trainer", "max_steps", self.max_steps)
        _check_positive("trainer", "threads", self.threads, allow_zero=True)
        if self.stage is Stage.finetune and not self.init_from:
            raise RnnregError(
                "trainer.stage=finetune needs trainer.init_from=<the trained run's directory>"
            )


class TestWeights(str, Enum):
    """Which weights the test set is scored with: ``best`` validation (AWD-LSTM's rule) or
    ``final``, after the last epoch (Zaremba's and Gal's Lua code). Both are recorded."""

    best = "best"
    final = "final"


class MaskDraw(str, Enum):
    """MC dropout: ``window`` draws fresh masks at every BPTT window; ``stream`` draws a
    sample's time-constant masks once for its whole pass over the split (one draw of the
    weights from the approximate posterior: Gal's ``run_MC_test``)."""

    window = "window"
    stream = "stream"


class Similarity(str, Enum):
    """The cache pointer's s(h_t, h_i): ``dot`` (Grave et al. 2017) or ``cosine``
    (AWD-LSTM's ``pointer.py``)."""

    dot = "dot"
    cosine = "cosine"


@dataclass
class CacheConfig:
    """Grave et al.'s continuous cache pointer on the last layer's output, evaluated at
    batch 1 (``rnnreg/evaluation/cache_pointer.py``).

    Where the defaults come from: window 500, θ 1.0 and λ 0.1 are AWD-LSTM's PTB command
    (its README: ``pointer.py --lambdasm 0.1 --theta 1.0 --window 500``), tuned there for
    its cosine similarity and its full-window rule, which ``experiment=awd_ptb`` follows.
    The default similarity is the paper's dot product, for which those θ and λ are only a
    starting point: choose them on validation (``python -m rnnreg.rescore <run> --grid``),
    as Grave et al. did.
    """

    enabled: bool = False
    window: int = 500
    theta: float = 1.0
    #: λ in p = (1 − λ) p_vocab + λ p_cache.
    interpolation: float = 0.1
    similarity: Similarity = Similarity.dot
    #: Mix the cache in only once it holds ``window`` positions (AWD's pointer.py).
    full_window: bool = False
    theta_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 1.0, 2.0])
    interpolation_grid: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    )

    def __post_init__(self) -> None:
        coerce_enums(self, "eval.cache")
        _check_positive("eval.cache", "window", self.window)
        if not 0.0 <= self.interpolation <= 1.0:
            raise RnnregError(f"eval.cache.interpolation={self.interpolation} must lie in [0, 1]")


@dataclass
class DynamicConfig:
    """Krause et al.'s RMS-normalised dynamic evaluation at batch 1
    (``rnnreg/evaluation/dynamic.py``). Defaults: ``dynamiceval.py`` of
    benkrause/dynamic-evaluation, tuned there for AWD-LSTM on PTB (η 5e-5, λ 0.002,
    ε 2e-5, segments of 5 tokens, gradient statistics at batch 100 over the training set);
    its grid (``--grid``) is ``lr_grid`` x ``decay_grid``, searched here on the first
    ``grid_tokens`` validation tokens (its ``--gridfast``: 30,000)."""

    enabled: bool = False
    lr: float = 5e-5
    decay: float = 0.002
    epsilon: float = 2e-5
    segment: int = 5
    stats_batch_size: int = 100
    #: Stop the gradient statistics after this many segments (0: the whole training set).
    stats_max_batches: int = 0
    lr_grid: list[float] = field(default_factory=lambda: [3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 1e-4])
    decay_grid: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.003, 0.005])
    grid_tokens: int = 30000

    def __post_init__(self) -> None:
        for name in ("lr", "decay", "epsilon", "stats_max_batches"):
            _check_positive("eval.dynamic", name, getattr(self, name), allow_zero=True)
        for name in ("segment", "stats_batch_size", "grid_tokens"):
            _check_positive("eval.dynamic", name, getattr(self, name))


@dataclass
class EvalConfig:
    """Perplexity = exp(mean NLL over every predicted token of a split, each once)."""

    #: Validation is batched like training, as in the papers.
    batch_size: int = 20
    #: Test is one sequential stream, as in the papers.
    test_batch_size: int = 1
    #: BPTT window for evaluation (only speed depends on it; state is carried).
    bptt: int = 35
    #: MC-dropout samples K for the final evaluation of the best weights (0: standard only).
    mc_samples: int = 0
    #: At most this many samples per batched pass (0: as many as keep a window's logits
    #: under 512 MB, rnnreg/evaluation/mc.py MC_PASS_BYTES).
    mc_replicas_per_pass: int = 0
    #: Calibration and uncertainty of the standard and MC evaluations of validation and
    #: test (accuracy, Brier, ECE, entropies, MI, error-detection AUROC;
    #: rnnreg/evaluation/uncertainty.py).
    uncertainty: bool = False
    #: When MC-dropout masks are drawn (see :class:`MaskDraw`).
    mc_mask_draw: MaskDraw = MaskDraw.window
    #: Keep the word-type (embedding) mask on in MC dropout (Gal's code turns it off).
    mc_embedding_dropout: bool = True
    #: The weights whose test perplexity is ``test_ppl`` (and MC); see :class:`TestWeights`.
    test_weights: TestWeights = TestWeights.best
    #: Also evaluate with the continuous cache pointer (``val_ppl_cache``, ...).
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: Also evaluate dynamically (``val_ppl_dynamic``, ...).
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def __post_init__(self) -> None:
        coerce_enums(self, "eval")
        for name in ("batch_size", "test_batch_size", "bptt"):
            _check_positive("eval", name, getattr(self, name))
        _check_positive("eval", "mc_samples", self.mc_samples, allow_zero=True)
        _check_positive("eval", "mc_replicas_per_pass", self.mc_replicas_per_pass, allow_zero=True)


class LoggerName(str, Enum):
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


@dataclass
class LoggerConfig:
    """An experiment tracker beside the run's TensorBoard events (rnnreg/records/loggers.py).
    How a run is recorded, not what it computes: a resume may change it."""

    name: LoggerName = LoggerName.tensorboard
    #: W&B: the project, and ``offline`` (sync later with ``wandb sync``) or ``online``.
    project: str = "rnnreg"
    mode: str = "offline"
    #: MLflow: the tracking store and the experiment's name.
    tracking_uri: str = "sqlite:///${oc.env:RNNREG_OUTPUTS,${rnnreg.root:outputs}}/mlflow.db"
    experiment: str = "rnnreg"

    def __post_init__(self) -> None:
        coerce_enums(self, "logger")
        if self.mode not in ("offline", "online", "disabled"):
            raise RnnregError(f"logger.mode={self.mode} must be offline, online or disabled")


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.trainer.variable_bptt and self.optim.loss_sum_over_time:
            raise RnnregError(
                "trainer.variable_bptt=true scales each step's learning rate by L / bptt and "
                "optim.loss_sum_over_time=true scales its loss by L: the window length would "
                "count twice; set optim.loss_sum_over_time=false (AWD-LSTM's token mean, as "
                "optim=ntasgd has it)"
            )


#: The config groups users choose from (``group=option``), one per concern.
GROUPS = ("dataset", "model", "variant", "objective", "optim", "logger", "experiment")


CONF_DIR = PROJECT_ROOT / "conf"


def _root_resolver(relative: str = "") -> str:
    return str(PROJECT_ROOT / relative) if relative else str(PROJECT_ROOT)


def register() -> None:
    """Register the schema, every plug-in variant (``variant/<name>``, its settings joined
    to :class:`VariantConfig`) and the ``${rnnreg.root:...}`` resolver (idempotent)."""
    if not OmegaConf.has_resolver("rnnreg.root"):
        OmegaConf.register_new_resolver("rnnreg.root", _root_resolver)
    store = ConfigStore.instance()
    store.store(name="base_config", node=RunConfig)
    for name, rule in plugins().items():
        node = OmegaConf.merge(
            OmegaConf.structured(plugin_variant_schema(rule)), OmegaConf.load(rule.conf)
        )
        store.store(group="variant", name=name, node=node)


@functools.cache
def plugin_variant_schema(rule: Any) -> type:
    """:class:`VariantConfig` with the fields of ``rule.settings``: a closed schema, so a
    typo in a plug-in's rate fails at start-up as for the built-ins; its rates are
    checked to lie in [0, 1) (``rule.masks``). The class keeps ``rule`` (the model builds
    the rule from it, rnnreg/model/lm.py)."""
    own = dataclasses.fields(rule.settings)
    clash = {f.name for f in own} & {f.name for f in dataclasses.fields(VariantConfig)}
    if clash:
        raise RnnregError(
            f"plug-in variant {rule.name!r}: settings {sorted(clash)} are already variant "
            "settings; rename them (e.g. with the rule's name as a prefix)"
        )
    rates = tuple(spec.rate for spec in rule.masks)

    def __post_init__(self: Any) -> None:
        VariantConfig.__post_init__(self)
        for key in rates:
            check_rate(getattr(self, key), f"variant.{key}")

    return dataclasses.make_dataclass(
        f"{rule.settings.__name__}Variant",
        [(f.name, f.type, dataclasses.field(default=f.default)) for f in own],
        bases=(VariantConfig,),
        namespace={
            "rule": rule,
            "__post_init__": __post_init__,
            "__module__": rule.settings.__module__,
        },
    )


def plugin_settings(variant: VariantConfig) -> Any:
    """The plug-in rule's own settings object from a composed variant, or None (built-in)."""
    rule = getattr(type(variant), "rule", None)
    if rule is None:
        return None
    return rule.settings(
        **{f.name: getattr(variant, f.name) for f in dataclasses.fields(rule.settings)}
    )


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve ``cfg`` and build the dataclasses, running their range checks."""
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise RnnregError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    if not isinstance(run, RunConfig):  # a plain dict: the schema was not used
        raise RnnregError("configuration was not composed from rnnreg's schema (base_config)")
    return run


def group_options(group: str, conf_dir: os.PathLike[str] | str = CONF_DIR) -> list[str]:
    """The option names available in a config group (the YAML files of ``conf/<group>``,
    and for ``variant`` the installed plug-ins)."""
    directory = os.path.join(conf_dir, group)
    found = set(plugins()) if group == "variant" else set()
    if os.path.isdir(directory):
        found |= {f[:-5] for f in os.listdir(directory) if f.endswith(".yaml")}
    return sorted(found)


def as_plain_dict(run: RunConfig) -> dict[str, Any]:
    """The resolved config as plain Python types (for checkpoints and summaries)."""
    container = OmegaConf.to_container(OmegaConf.structured(run), resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]
