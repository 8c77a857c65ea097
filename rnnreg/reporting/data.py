"""The runs under ``outputs/`` as rows of the perplexity table: read, grouped, summarised.

Reads files only (``summary.json`` and ``metrics.csv`` at any depth), never live objects.
See :mod:`rnnreg.report` for what the report shows.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rnnreg import PROJECT_ROOT, RnnregError
from rnnreg.config.schema import (
    GROUPS,
    evaluation_settings,
    flat_settings,
    group_options,
    training_settings,
)
from rnnreg.config.tune import COMPARISON_MARKER
from rnnreg.reporting.lua_validation import per_token_from_printed
from rnnreg.reporting.significance import Comparison, compare_to_reference, mean_interval

log = logging.getLogger(__name__)


class Key(NamedTuple):
    """What a report row is: one trained configuration (its dataset, model, variant,
    budget, precision and the digest of every other training setting,
    :func:`rnnreg.config.schema.training_settings`), evaluated one way (``evaluation``,
    with ``evaluated``: that evaluation's settings that differ from its preset's, e.g.
    ``K=100``). Rows of one configuration are sub-rows of one group."""

    dataset: str
    model: str
    variant: str
    budget: str
    evaluation: str
    precision: str
    digest: str
    evaluated: str = ""


#: Outcome settings a label leaves out: the budget column shows them, and the variant's
#: name the cell (``gru:gal_tied``, :attr:`Run.variant_label`).
SHOWN_ELSEWHERE = ("trainer.epochs", "trainer.max_steps", "model.cell")


#: The calibration columns (eval.uncertainty; rnnreg/evaluation/uncertainty.py), the
#: mean over a group's runs of ``test_<metric>`` (``_mc`` for the MC rows).
CALIBRATION = ("acc", "brier", "ece", "mi", "auroc_maxprob", "auroc_entropy", "auroc_mi")


#: The evaluations a summary can hold, and the suffix of their fields (``test_ppl_mc``).
EVALUATION_SUFFIX = {"standard": "", "mc": "_mc", "cache": "_cache", "dynamic": "_dynamic"}


PUBLISHED = Path(__file__).resolve().parent / "reference" / "published.csv"


REPORT_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "settings",
    "budget",
    "evaluation",
    "evaluation_settings",
    "precision",
    "runs",
    "seeds",
    "duplicate_seeds",
    "val_runs",
    "val_mean",
    "val_std",
    "test_runs",
    "test_mean",
    "test_std",
    "test_ci_low",
    "test_ci_high",
    "test_ci_method",
    "reference",
    "test_minus_reference",
    "p_holm",
    "best_run",
    "best_val",
    "best_test",
    "calibration_runs",
    *(f"test_{metric}" for metric in CALIBRATION),
    "tokens_per_s",
    "lstm_path",
    "params",
    "paper",
    "paper_val",
    "paper_val_printed",
    "paper_test",
    "paper_confidence",
    "paper_preset",
    "paper_note",
    "test_minus_paper",
)


@dataclass
class Run:
    """One run directory, as its summary.json describes it."""

    path: Path
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def variant_label(self) -> str:
        """The variant as the papers name it (``+finetune`` for AWD's second stage), with
        its two-pass objective (``zaremba+fd``) and, on GRU layers, the cell
        (``gru:gal_tied``)."""
        name = str(self.summary.get("variant"))
        if name == "gal":
            name = "gal_tied"
        if (self.config.get("model") or {}).get("cell", "lstm") == "gru":
            name = f"gru:{name}"
        objective = (self.config.get("objective") or {}).get("name", "none")
        if objective != "none":
            name += f"+{objective}"
        if self.summary.get("stage") == "finetune":
            name += "+finetune"
        return name

    @property
    def budget(self) -> str:
        """What the run was given: ``<N> epochs`` or ``<N> steps`` (``trainer.max_steps``)."""
        trainer = self.summary.get("config", {}).get("trainer", {})
        if trainer.get("max_steps"):
            return f"{trainer['max_steps']} steps"
        epochs = self.summary.get("epochs_planned", trainer.get("epochs"))
        return f"{epochs} epoch{'' if epochs == 1 else 's'}"

    @property
    def precision(self) -> str:
        """``trainer.precision``; for a run from before it was recorded, what PyTorch's
        defaults gave: IEEE fp32, except cuDNN's TF32 on a GPU's fused path."""
        if self.summary.get("precision"):
            return str(self.summary["precision"])
        on_gpu = str(self.summary.get("device", "cpu")).startswith("cuda")
        if on_gpu and self.summary.get("lstm_path") in ("fused", "mixed"):
            return "tf32 (cuDNN default, unrecorded)"
        return "fp32"

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved config (empty for a summary without one)."""
        config = self.summary.get("config")
        return config if isinstance(config, dict) else {}

    @functools.cached_property
    def training(self) -> dict[str, Any]:
        """The settings of the trained configuration, as dotted keys."""
        return training_settings(self.config)

    def evaluated(self, evaluation: str) -> dict[str, Any]:
        """The settings that decided this run's ``evaluation`` numbers: its config's, with
        the K and mask draw of MC numbers a rescore wrote (summary.json's ``mc_samples``,
        ``mc_mask_draw``)."""
        settings = evaluation_settings(self.config, evaluation)
        for name in ("mc_samples", "mc_mask_draw"):
            if f"eval.{name}" in settings and self.summary.get(name) is not None:
                settings[f"eval.{name}"] = self.summary[name]
        return settings

    def evaluation_label(self, evaluation: str) -> str:
        """The settings of ``evaluation`` that differ from those of the preset the run was
        composed from (the schema's defaults where it no longer composes):
        ``test_batch_size=20``; MC always shows its K first (``K=100``)."""
        settings = self.evaluated(evaluation)
        preset = composed_config(self.preset_choices())
        defaults = flat_settings(preset["eval"], "eval.") if preset else default_evaluation()
        parts = [f"K={settings['eval.mc_samples']}"] if "eval.mc_samples" in settings else []
        parts += [
            f"{key.removeprefix('eval.')}={label_value(value)}"
            for key, value in sorted(settings.items())
            if key != "eval.mc_samples" and defaults.get(key, value) != value
        ]
        return ", ".join(parts)

    def key(self, evaluation: str) -> Key:
        s = self.summary
        canonical = json.dumps(self.training, sort_keys=True, default=str)
        return Key(
            str(s.get("dataset")),
            str(s.get("model")),
            self.variant_label,
            self.budget,
            evaluation,
            self.precision,
            hashlib.sha1(canonical.encode()).hexdigest(),
            self.evaluation_label(evaluation),
        )

    def preset_choices(self) -> tuple[str, ...]:
        """The config groups this run was composed from (``experiment=…``, ``variant=…``),
        read from its ``.hydra/overrides.yaml``; without one, its variant, model and
        dataset where they name a group's option."""
        path = self.path / ".hydra" / "overrides.yaml"
        if path.is_file():
            lines = [line[2:].strip() for line in path.read_text().splitlines()]
            pairs = [line.split("=", 1) for line in lines if "=" in line]
            return tuple(f"{k}={v}" for k, v in pairs if k.lstrip("+~") in GROUPS)
        s = self.summary
        named = {"dataset": s.get("dataset"), "model": s.get("model"), "variant": s.get("variant")}
        return tuple(
            f"{group}={name}" for group, name in named.items() if name in group_options(group)
        )

    def settings_label(self) -> str:
        """What the trained configuration changed from the preset the run was composed
        from: ``variant.p_input=0.2`` (evaluation settings are the sub-rows' own)."""
        preset = composed_config(self.preset_choices())
        if preset is None:
            return "preset unknown"
        theirs = training_settings(preset)
        return ", ".join(
            f"{key}={label_value(value)}"
            for key, value in sorted(self.training.items())
            if key in theirs and theirs[key] != value and key not in SHOWN_ELSEWHERE
        )

    def metrics(self) -> list[dict[str, str]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))


@dataclass
class Group:
    """Finished runs of one trained configuration evaluated one way: one per seed, the same
    seed again set apart."""

    key: Key
    label: str = ""
    runs: list[Run] = field(default_factory=list)
    duplicates: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The variant and what differs from its preset: ``zaremba (variant.p_input=0.2)``."""
        return f"{self.key[2]} ({self.label})" if self.label else self.key[2]

    def add(self, run: Run) -> None:
        seeds = {r.summary.get("seed") for r in self.runs}
        (self.duplicates if run.summary.get("seed") in seeds else self.runs).append(run)

    def values(self, name: str) -> list[float]:
        suffix = EVALUATION_SUFFIX[self.key[4]]
        found = [r.summary.get(f"{name}{suffix}") for r in self.runs]
        return [float(v) for v in found if v is not None and math.isfinite(float(v))]


def label_value(value: Any) -> str:
    """A setting as a label shows it: floats to 4 significant digits (a tuned rate is
    0.1027, not 0.10272912357197912); labels that then coincide get a digest
    (:func:`group_runs`), so the rounding never merges two configurations."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def shown_path(path: Path) -> str:
    """``path`` as a report writes it: relative to the repository when inside it, so that a
    tracked report (``make compare-report``) reads the same from any checkout; else whole."""
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def find_runs(outputs: Path, match: str = "*") -> list[Run]:
    """Every directory under ``outputs`` holding a readable summary.json, whose name
    matches the glob ``match`` (``compare_*``: the comparison's rows in the ledger)."""
    runs = []
    for root, _dirs, files in os.walk(outputs, followlinks=True):  # outputs/ledger links
        if "summary.json" not in files or Path(root).name == "report" or is_trial(Path(root)):
            continue
        if not fnmatch.fnmatch(Path(root).name, match):
            continue
        path = Path(root)
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:  # written atomically: it is damaged
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.strerror
            log.warning("skipped %s: unreadable (%s); fix or delete it", path / "summary.json", why)
            continue
        runs.append(Run(path, summary))
    return sorted(runs, key=lambda run: str(run.path))


def is_trial(run_dir: Path) -> bool:
    """A tuning trial (``<tune.dir>/<variant>/trial_NNNN``): reported with its study
    (rnnreg/reporting/tuning.py), never as a configuration of its own."""
    study = run_dir.parent.parent
    marks = ("study.json", "journal.log", COMPARISON_MARKER)
    return run_dir.name.startswith("trial_") and any((study / m).exists() for m in marks)


def group_runs(runs: list[Run]) -> list[Group]:
    """Finished runs grouped by their trained configuration, one group per evaluation and
    its settings (the sub-rows of one configuration), never two configurations in one
    mean; labels that would be equal for different settings get the settings' digest."""
    groups: dict[Key, Group] = {}
    for run in runs:
        if run.status != "completed":
            continue
        for evaluation, suffix in EVALUATION_SUFFIX.items():
            if evaluation != "standard" and run.summary.get(f"test_ppl{suffix}") is None:
                continue
            key = run.key(evaluation)
            if key not in groups:
                groups[key] = Group(key, run.settings_label())
            groups[key].add(run)
    named: dict[tuple[str, ...], list[Group]] = defaultdict(list)
    for group in groups.values():
        named[(*group.key[:6], group.key.evaluated, group.label)].append(group)
    for same in named.values():
        for group in same[1:]:
            group.label = ", ".join(filter(None, [group.label, f"#{group.key[6][:6]}"]))
    return [groups[key] for key in sorted(groups)]


@functools.cache
def composed_config(choices: tuple[str, ...]) -> dict[str, Any] | None:
    """The resolved config these group choices (or overrides) compose, as plain types, or
    None when they no longer compose (a preset renamed since the run)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rnnreg.config.schema import CONF_DIR, as_plain_dict, register, to_run_config

    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(choices))
        return as_plain_dict(to_run_config(cfg))
    except (HydraException, OmegaConfBaseException, RnnregError, ValueError):
        return None


@functools.cache
def default_evaluation() -> dict[str, Any]:
    """The schema's evaluation settings by default, as dotted ``eval.*`` keys."""
    from omegaconf import OmegaConf

    from rnnreg.config.schema import EvalConfig

    container = OmegaConf.to_container(OmegaConf.structured(EvalConfig), enum_to_str=True)
    assert isinstance(container, dict)
    return flat_settings(container, "eval.")


def pooled_bins(runs: list[Run], name: str) -> dict[str, list[float]] | None:
    """The reliability bins ``name`` (``test``, ``test_mc``) of the runs pooled: counts
    summed, confidence and accuracy weighted by count; None when no run has them."""
    found = [
        r.summary["reliability"][name] for r in runs if name in (r.summary.get("reliability") or {})
    ]
    if not found:
        return None
    counts = [sum(b["count"][i] for b in found) for i in range(len(found[0]["count"]))]
    pooled: dict[str, list[float]] = {"count": counts}
    for field_name in ("confidence", "accuracy"):
        pooled[field_name] = [
            sum(b["count"][i] * b[field_name][i] for b in found) / n if n else 0.0
            for i, n in enumerate(counts)
        ]
    return pooled


def load_published(path: Path = PUBLISHED) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def published_for(key: Key, rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The first published row for this dataset, model, variant and evaluation."""
    dataset, model, variant, evaluation = key[0], key[1], key[2], key[4]
    for row in rows:
        if (row["dataset"], row["model"], row["variant"], row["evaluation"]) == (
            dataset,
            model,
            variant,
            evaluation,
        ):
            return row
    return None


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """``key ours ≠ theirs`` for every key both hold with different values (a key only one
    side knows is a setting added to the schema since: its default kept the old rule)."""
    return [
        f"{key} {label_value(ours[key])} ≠ {label_value(theirs[key])}"
        for key in sorted(ours.keys() & theirs.keys())
        if ours[key] != theirs[key]
    ]


def _first(gaps: list[str], shown: int = 2) -> str:
    more = f" (+{len(gaps) - shown} more)" if len(gaps) > shown else ""
    return "; ".join(gaps[:shown]) + more


def protocol_gap(run: Run, evaluation: str, row: dict[str, str]) -> str | None:
    """Why the published ``row`` does not belong beside ``run`` evaluated as
    ``evaluation``, or None when it does: the run's training configuration equals the
    row's preset's key for key (epochs included), and its evaluation settings equal the
    preset's (K aside: :func:`k_note`)."""
    if not row.get("preset"):
        return f"no preset follows {row['paper']}'s protocol"
    preset = composed_config((f"experiment={row['preset']}",))
    if preset is None:
        return f"preset {row['preset']} does not compose"
    gaps = differences(run.training, training_settings(preset))
    if gaps:
        return "not the preset: " + _first(gaps)
    ours, theirs = (
        evaluation_settings(run.config, evaluation),
        evaluation_settings(preset, evaluation),
    )
    gaps = [gap for gap in differences(ours, theirs) if not gap.startswith("eval.mc_samples ")]
    return "not the preset's evaluation: " + _first(gaps) if gaps else None


def k_note(run: Run, row: dict[str, str]) -> str | None:
    """``K=100 here, K=1000 in the paper`` where only the MC sample count differs."""
    theirs = row.get("mc_samples")
    ours = run.evaluated("mc").get("eval.mc_samples")
    if row.get("evaluation") != "mc" or not theirs or ours is None or int(theirs) == ours:
        return None
    return f"K={ours} here, K={theirs} in the paper"


def paper_for(
    group: Group, published: list[dict[str, str]]
) -> tuple[dict[str, str] | None, str | None]:
    """The published row set beside ``group`` and a note (both K where they differ), or
    None and one line saying why not (None when no paper reports this variant)."""
    key = group.key
    wanted = (key.dataset, key.model, key.variant, key.evaluation)
    rows = [
        r for r in published if (r["dataset"], r["model"], r["variant"], r["evaluation"]) == wanted
    ]
    gaps = []
    for row in sorted(rows, key=lambda r: not r.get("preset")):  # rows with a preset first
        gap = protocol_gap(group.runs[0], key.evaluation, row)
        if gap is None:
            return row, k_note(group.runs[0], row)
        gaps.append(gap)
    return None, gaps[0] if gaps else None


def printed_val(row: dict[str, str] | None) -> float | None:
    """A published row's validation perplexity as the paper printed it."""
    return float(row["val_ppl"]) if row and row.get("val_ppl") else None


def paper_val(row: dict[str, str] | None) -> float | None:
    """A published row's validation perplexity per token, the quantity ours is: the number
    as printed, or, where the Lua scripts' run_valid() printed it (``lua_valid_bptt``
    set), printed ** (L / ⌊L⌋) (rnnreg/reporting/lua_validation.py)."""
    printed = printed_val(row)
    bptt = row.get("lua_valid_bptt") if row else None
    return per_token_from_printed(printed, int(bptt)) if printed and bptt else printed


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; no deviation from a single run."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(group: Group, published: list[dict[str, str]]) -> dict[str, Any]:
    suffix = EVALUATION_SUFFIX[group.key.evaluation]
    vals = group.values("val_ppl" if suffix else "best_val_ppl")
    val_mean, val_std = _mean_std(vals)
    tests = group.values("test_ppl")
    test_mean, test_std = _mean_std(tests)
    interval = mean_interval(tests)
    best = min(group.runs, key=lambda r: r.summary.get("best_val_ppl") or math.inf)
    rates = [float(r.summary["tokens_per_s"]) for r in group.runs if r.summary.get("tokens_per_s")]
    paper, paper_note = paper_for(group, published)
    seeds = sorted({r.summary.get("seed") for r in group.runs}, key=str)
    twice = sorted({r.summary.get("seed") for r in group.duplicates}, key=str)
    paper_test = float(paper["test_ppl"]) if paper and paper["test_ppl"] else None
    return {
        "dataset": group.key.dataset,
        "model": group.key.model,
        "variant": group.key.variant,
        "settings": group.label,
        "budget": group.key.budget,
        "evaluation": group.key.evaluation,
        "evaluation_settings": group.key.evaluated,
        "precision": group.key.precision,
        "runs": len(group.runs),
        "seeds": " ".join(str(seed) for seed in seeds),
        "duplicate_seeds": " ".join(str(seed) for seed in twice),
        "val_runs": len(vals),
        "val_mean": val_mean,
        "val_std": val_std,
        "test_runs": len(tests),
        "test_mean": test_mean,
        "test_std": test_std,
        "test_ci_low": interval.low if interval else None,
        "test_ci_high": interval.high if interval else None,
        "test_ci_method": interval.method if interval else None,
        "reference": None,
        "test_minus_reference": None,
        "p_holm": None,
        "best_run": shown_path(best.path),
        "best_val": best.summary.get(f"val_ppl{suffix}" if suffix else "best_val_ppl"),
        "best_test": best.summary.get(f"test_ppl{suffix}"),
        "tokens_per_s": statistics.fmean(rates) if rates else None,
        "lstm_path": " ".join(
            sorted({str(r.summary["lstm_path"]) for r in group.runs if r.summary.get("lstm_path")})
        ),
        "params": group.runs[0].summary.get("params"),
        "calibration_runs": len(group.values("test_acc")),
        **{f"test_{m}": _mean_std(group.values(f"test_{m}"))[0] for m in CALIBRATION},
        "paper": paper["paper"] if paper else None,
        "paper_val": paper_val(paper),
        "paper_val_printed": printed_val(paper),
        "paper_test": paper_test,
        "paper_confidence": paper["confidence"] if paper else None,
        "paper_preset": paper.get("preset") if paper else None,
        "paper_note": paper_note,
        "test_minus_paper": (test_mean - paper_test)
        if test_mean is not None and paper_test is not None
        else None,
    }


#: dataset, model, budget, evaluation, its settings, precision: the rows compared together.
Setting = tuple[str, str, str, str, str, str]


def row_name(row: dict[str, Any]) -> str:
    """A report row's group name (:attr:`Group.name`)."""
    return f"{row['variant']} ({row['settings']})" if row["settings"] else str(row["variant"])


def setting_of(key: Key) -> Setting:
    return (key.dataset, key.model, key.budget, key.evaluation, key.evaluated, key.precision)


def cell_of(name: str) -> str:
    """The cell of a report variant or group name: ``gru`` for ``gru:gal_tied``
    (:attr:`Run.variant_label`), else ``lstm``."""
    return name.split(":", 1)[0] if ":" in name.split(" (", 1)[0] else "lstm"


def in_cell(reference: str, cell: str) -> str:
    """``reference`` among the rows of ``cell``: ``--reference zaremba`` names the LSTM's
    zaremba and, among GRU rows, ``gru:zaremba``; a cell prefix given is replaced."""
    bare = reference.split(":", 1)[1] if cell_of(reference) != "lstm" else reference
    return bare if cell == "lstm" else f"{cell}:{bare}"


def resolve_reference(variants: dict[str, str], reference: str) -> str | None:
    """The group (name -> variant, one setting) that ``reference`` names: a group's own
    name, else the one group of that variant, else that variant's group at its preset
    (no label); None when it is absent or ambiguous."""
    if reference in variants:
        return reference
    named = [name for name, variant in variants.items() if variant == reference]
    if len(named) == 1:
        return named[0]
    return reference if reference in named else None


def _families(groups: list[Group]) -> dict[tuple[Setting, str], dict[str, Group]]:
    """The groups compared together: one setting, one cell (name -> group)."""
    families: dict[tuple[Setting, str], dict[str, Group]] = defaultdict(dict)
    for group in groups:
        families[(setting_of(group.key), cell_of(group.key.variant))][group.name] = group
    return families


def compare_groups(
    groups: list[Group], rows: list[dict[str, Any]], reference: str
) -> dict[Setting, list[Comparison]]:
    """Welch + Holm of every group against ``reference`` (a variant, found by variant, or
    a group's name: ``zaremba (variant.p_input=0.2)``) within each setting and cell: GRU
    rows against the GRU's ``reference`` (:func:`in_cell`), never against an LSTM, and
    Holm over each cell's comparisons. The rows gain ``reference``,
    ``test_minus_reference`` and ``p_holm``. One logged line when the reference is in no
    setting."""
    comparisons: dict[Setting, list[Comparison]] = defaultdict(list)
    families = _families(groups)
    for setting, cell in sorted(families, key=lambda k: (k[0], k[1] != "lstm", k[1])):
        family = families[(setting, cell)]
        variants = {name: group.key.variant for name, group in family.items()}
        found = resolve_reference(variants, in_cell(reference, cell))
        values = {name: group.values("test_ppl") for name, group in family.items()}
        if found is not None:
            comparisons[setting] += compare_to_reference(values, found)
    if groups and not comparisons:
        present = sorted({group.key.variant for group in groups})
        log.warning(
            "reference %r is in no setting of the report, nothing compared; --reference one of: %s",
            reference,
            ", ".join(present),
        )
    for row in rows:
        setting = (
            row["dataset"],
            row["model"],
            row["budget"],
            row["evaluation"],
            row["evaluation_settings"],
            row["precision"],
        )
        for c in comparisons.get(setting, []):
            if c.variant == row_name(row):
                row["reference"], row["test_minus_reference"] = c.reference, c.difference
                row["p_holm"] = c.p_holm
    return {setting: found for setting, found in comparisons.items() if found}


@functools.cache
def protocol_epochs() -> dict[str, int]:
    """Epochs of the papers' protocols per model, read from the presets
    (``conf/experiment/*.yaml``, composed): the fewest any preset of that model trains.
    A shorter budget ranks the variants before the regularizers have paid off."""
    from hydra import compose, initialize_config_dir

    from rnnreg.config.schema import CONF_DIR, group_options, register

    register()
    epochs: dict[str, int] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for preset in group_options("experiment"):
            cfg = compose("config", overrides=[f"experiment={preset}"])
            model, count = str(cfg.model.name), int(cfg.trainer.epochs)
            epochs[model] = min(count, epochs.get(model, count))
    return epochs


def budget_note(model: str, budget: str) -> str | None:
    """Why a ranking may not be the papers': a budget shorter than their protocol."""
    count, unit = budget.split(" ", 1)
    protocol = protocol_epochs().get(model)
    if unit.startswith("step"):
        return (
            f"budget-limited: {count} steps; the papers' ranking appears only after full training"
        )
    if protocol is not None and int(count) < protocol:
        return (
            f"budget-limited: {count} of {protocol} epochs; the papers' ranking appears only "
            "after full training"
        )
    return None
