"""The runs under ``outputs/`` as rows of the perplexity table: read, grouped, summarised.

Reads files only (``summary.json`` and ``metrics.csv`` at any depth), never live objects.
See :mod:`rnnreg.report` for what the report shows.
"""

from __future__ import annotations

import csv
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
from typing import Any

from rnnreg import RnnregError
from rnnreg.config.schema import GROUPS, group_options, outcome_settings
from rnnreg.config.tune import COMPARISON_MARKER
from rnnreg.reporting.lua_validation import per_token_from_printed
from rnnreg.reporting.significance import Comparison, compare_to_reference, mean_interval

log = logging.getLogger(__name__)

#: dataset, model, variant, budget, evaluation, precision, and the digest of every other
#: outcome setting (:func:`rnnreg.config.schema.outcome_settings`).
Key = tuple[str, str, str, str, str, str, str]

#: Outcome settings a label leaves out: the budget column shows them.
BUDGET_SETTINGS = ("trainer.epochs", "trainer.max_steps")


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
    "precision",
    "runs",
    "seeds",
    "duplicate_seeds",
    "val_mean",
    "val_std",
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
    *(f"test_{metric}" for metric in CALIBRATION),
    "tokens_per_s",
    "lstm_path",
    "params",
    "paper",
    "paper_val",
    "paper_val_printed",
    "paper_test",
    "paper_confidence",
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
        """The variant as the papers name it (``+finetune`` for AWD's second stage)."""
        name = str(self.summary.get("variant"))
        if name == "gal":
            name = "gal_tied"
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
    def outcome(self) -> dict[str, Any]:
        """The settings that decide this run's numbers, as dotted keys."""
        config = self.summary.get("config")
        return outcome_settings(config) if isinstance(config, dict) else {}

    def key(self, evaluation: str) -> Key:
        s = self.summary
        canonical = json.dumps(self.outcome, sort_keys=True, default=str)
        return (
            str(s.get("dataset")),
            str(s.get("model")),
            self.variant_label,
            self.budget,
            evaluation,
            self.precision,
            hashlib.sha1(canonical.encode()).hexdigest(),
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
        """What differs from the preset the run was composed from: ``variant.p_input=0.2``."""
        preset = preset_outcome(self.preset_choices())
        if preset is None:
            return "preset unknown"
        return ", ".join(
            f"{key}={label_value(value)}"
            for key, value in sorted(self.outcome.items())
            if key in preset and preset[key] != value and key not in BUDGET_SETTINGS
        )

    def metrics(self) -> list[dict[str, str]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))


@dataclass
class Group:
    """Finished runs of one configuration: one per seed, the same seed again set apart."""

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


def find_runs(outputs: Path) -> list[Run]:
    """Every directory under ``outputs`` holding a readable summary.json."""
    runs = []
    for root, _dirs, files in os.walk(outputs, followlinks=True):  # outputs/ledger links
        if "summary.json" not in files or Path(root).name == "report" or is_trial(Path(root)):
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
    """Finished runs grouped by every outcome setting, never two configurations in one
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
        named[(*group.key[:6], group.label)].append(group)
    for same in named.values():
        for group in same[1:]:
            group.label = ", ".join(filter(None, [group.label, f"#{group.key[6][:6]}"]))
    return [groups[key] for key in sorted(groups)]


@functools.cache
def preset_outcome(choices: tuple[str, ...]) -> dict[str, Any] | None:
    """The outcome settings of the config these group choices compose, or None when they
    no longer compose (a preset renamed since the run)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rnnreg.config.schema import CONF_DIR, as_plain_dict, register, to_run_config

    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(choices))
        return outcome_settings(as_plain_dict(to_run_config(cfg)))
    except (HydraException, OmegaConfBaseException, RnnregError, ValueError):
        return None


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
    suffix = EVALUATION_SUFFIX[group.key[4]]
    val_mean, val_std = _mean_std(group.values("val_ppl" if suffix else "best_val_ppl"))
    tests = group.values("test_ppl")
    test_mean, test_std = _mean_std(tests)
    interval = mean_interval(tests)
    best = min(group.runs, key=lambda r: r.summary.get("best_val_ppl") or math.inf)
    rates = [float(r.summary["tokens_per_s"]) for r in group.runs if r.summary.get("tokens_per_s")]
    paper = None if group.label else published_for(group.key, published)  # the preset's row
    seeds = sorted({r.summary.get("seed") for r in group.runs}, key=str)
    twice = sorted({r.summary.get("seed") for r in group.duplicates}, key=str)
    paper_test = float(paper["test_ppl"]) if paper and paper["test_ppl"] else None
    return {
        "dataset": group.key[0],
        "model": group.key[1],
        "variant": group.key[2],
        "settings": group.label,
        "budget": group.key[3],
        "evaluation": group.key[4],
        "precision": group.key[5],
        "runs": len(group.runs),
        "seeds": " ".join(str(seed) for seed in seeds),
        "duplicate_seeds": " ".join(str(seed) for seed in twice),
        "val_mean": val_mean,
        "val_std": val_std,
        "test_mean": test_mean,
        "test_std": test_std,
        "test_ci_low": interval.low if interval else None,
        "test_ci_high": interval.high if interval else None,
        "test_ci_method": interval.method if interval else None,
        "reference": None,
        "test_minus_reference": None,
        "p_holm": None,
        "best_run": str(best.path),
        "best_val": best.summary.get(f"val_ppl{suffix}" if suffix else "best_val_ppl"),
        "best_test": best.summary.get(f"test_ppl{suffix}"),
        "tokens_per_s": statistics.fmean(rates) if rates else None,
        "lstm_path": " ".join(
            sorted({str(r.summary["lstm_path"]) for r in group.runs if r.summary.get("lstm_path")})
        ),
        "params": group.runs[0].summary.get("params"),
        **{f"test_{m}": _mean_std(group.values(f"test_{m}"))[0] for m in CALIBRATION},
        "paper": paper["paper"] if paper else None,
        "paper_val": paper_val(paper),
        "paper_val_printed": printed_val(paper),
        "paper_test": paper_test,
        "paper_confidence": paper["confidence"] if paper else None,
        "test_minus_paper": (test_mean - paper_test)
        if test_mean is not None and paper_test is not None
        else None,
    }


Setting = tuple[str, str, str, str, str]  # dataset, model, budget, evaluation, precision


def row_name(row: dict[str, Any]) -> str:
    """A report row's group name (:attr:`Group.name`)."""
    return f"{row['variant']} ({row['settings']})" if row["settings"] else str(row["variant"])


def compare_groups(
    groups: list[Group], rows: list[dict[str, Any]], reference: str
) -> dict[Setting, list[Comparison]]:
    """Welch + Holm of every group against ``reference`` (a variant at its preset, or a
    group's name: ``zaremba (variant.p_input=0.2)``) within each setting; the rows gain
    ``reference``, ``test_minus_reference`` and ``p_holm``."""
    values: dict[Setting, dict[str, list[float]]] = defaultdict(dict)
    for group in groups:
        dataset, model, _variant, budget, evaluation, precision, _digest = group.key
        setting = (dataset, model, budget, evaluation, precision)
        values[setting][group.name] = group.values("test_ppl")
    comparisons = {
        setting: found
        for setting, by_variant in sorted(values.items())
        if (found := compare_to_reference(by_variant, reference))
    }
    for row in rows:
        setting = (row["dataset"], row["model"], row["budget"], row["evaluation"], row["precision"])
        for c in comparisons.get(setting, []):
            if c.variant == row_name(row):
                row["reference"], row["test_minus_reference"] = reference, c.difference
                row["p_holm"] = c.p_holm
    return comparisons


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
