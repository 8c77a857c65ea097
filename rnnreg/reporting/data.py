"""The runs under ``outputs/`` as rows of the perplexity table: read, grouped, summarised.

Reads files only (``summary.json`` and ``metrics.csv`` at any depth), never live objects.
See :mod:`rnnreg.report` for what the report shows.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnreg.reporting.significance import Comparison, compare_to_reference, mean_interval

log = logging.getLogger(__name__)

Key = tuple[str, str, str, str, str, str]  # dataset, model, variant, budget, evaluation, precision


#: The evaluations a summary can hold, and the suffix of their fields (``test_ppl_mc``).
EVALUATION_SUFFIX = {"standard": "", "mc": "_mc", "cache": "_cache", "dynamic": "_dynamic"}


PUBLISHED = Path(__file__).resolve().parent / "reference" / "published.csv"


REPORT_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "budget",
    "evaluation",
    "precision",
    "runs",
    "seeds",
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
    "tokens_per_s",
    "lstm_path",
    "params",
    "paper",
    "paper_val",
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

    def key(self, evaluation: str) -> Key:
        s = self.summary
        return (
            str(s.get("dataset")),
            str(s.get("model")),
            self.variant_label,
            self.budget,
            evaluation,
            self.precision,
        )

    def metrics(self) -> list[dict[str, str]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))


@dataclass
class Group:
    key: Key
    runs: list[Run] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        suffix = EVALUATION_SUFFIX[self.key[4]]
        found = [r.summary.get(f"{name}{suffix}") for r in self.runs]
        return [float(v) for v in found if v is not None and math.isfinite(float(v))]


def find_runs(outputs: Path) -> list[Run]:
    """Every directory under ``outputs`` holding a readable summary.json."""
    runs = []
    for root, _dirs, files in os.walk(outputs, followlinks=True):  # outputs/ledger links
        if "summary.json" not in files or Path(root).name == "report":
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


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[Key, Group] = {}
    for run in runs:
        if run.status != "completed":
            continue
        for evaluation, suffix in EVALUATION_SUFFIX.items():
            if evaluation != "standard" and run.summary.get(f"test_ppl{suffix}") is None:
                continue
            key = run.key(evaluation)
            groups.setdefault(key, Group(key)).runs.append(run)
    return [groups[key] for key in sorted(groups)]


def load_published(path: Path = PUBLISHED) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def published_for(key: Key, rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The first published row for this dataset, model, variant and evaluation."""
    dataset, model, variant, _budget, evaluation, _precision = key
    for row in rows:
        if (row["dataset"], row["model"], row["variant"], row["evaluation"]) == (
            dataset,
            model,
            variant,
            evaluation,
        ):
            return row
    return None


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
    paper = published_for(group.key, published)
    paper_test = float(paper["test_ppl"]) if paper and paper["test_ppl"] else None
    paper_val = float(paper["val_ppl"]) if paper and paper["val_ppl"] else None
    return {
        "dataset": group.key[0],
        "model": group.key[1],
        "variant": group.key[2],
        "budget": group.key[3],
        "evaluation": group.key[4],
        "precision": group.key[5],
        "runs": len(group.runs),
        "seeds": " ".join(str(s) for s in sorted({r.summary.get("seed") for r in group.runs})),
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
        "paper": paper["paper"] if paper else None,
        "paper_val": paper_val,
        "paper_test": paper_test,
        "paper_confidence": paper["confidence"] if paper else None,
        "test_minus_paper": (test_mean - paper_test)
        if test_mean is not None and paper_test is not None
        else None,
    }


Setting = tuple[str, str, str, str, str]  # dataset, model, budget, evaluation, precision


def compare_groups(
    groups: list[Group], rows: list[dict[str, Any]], reference: str
) -> dict[Setting, list[Comparison]]:
    """Welch + Holm of every variant against ``reference`` within each setting; the rows
    gain ``reference``, ``test_minus_reference`` and ``p_holm``."""
    values: dict[Setting, dict[str, list[float]]] = defaultdict(dict)
    for group in groups:
        dataset, model, variant, budget, evaluation, precision = group.key
        values[(dataset, model, budget, evaluation, precision)][variant] = group.values("test_ppl")
    comparisons = {
        setting: found
        for setting, by_variant in sorted(values.items())
        if (found := compare_to_reference(by_variant, reference))
    }
    for row in rows:
        setting = (row["dataset"], row["model"], row["budget"], row["evaluation"], row["precision"])
        for c in comparisons.get(setting, []):
            if c.variant == row["variant"]:
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
