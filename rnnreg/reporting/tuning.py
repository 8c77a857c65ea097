"""The equal-budget comparison in the report: every ``study.json`` that
``python -m rnnreg.tune`` wrote under the outputs, read with the trials' and the retrained
runs' summary.json files (files only; rnnreg/tuning/study.py writes them).

For each comparison: per variant the trials counted at their budget, the tuned values,
and the retrained seeds' test perplexity (mean, 95% interval, Welch + Holm against the
reference variant); a figure of each trial's validation perplexity against its number,
and one of the values tried for each tuned key (the best trial starred).
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from rnnreg.config.schema import outcome_settings
from rnnreg.reporting.axes import plain_log_ticks, save_figure
from rnnreg.reporting.data import Run, budget_note
from rnnreg.reporting.significance import compare_to_reference, mean_interval

log = logging.getLogger(__name__)


def find_studies(outputs: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(outputs.rglob("study.json")):
        try:
            found.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipped %s: unreadable (%s)", path, type(exc).__name__)
    return found


def _summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def trial_curve(root: Path, variant: str) -> list[tuple[int, float, str]]:
    """(trial number, best validation perplexity so far, status) of each trial's run."""
    points = []
    for run_dir in sorted((root / variant).glob("trial_*")):
        s = _summary(run_dir)
        if s and s.get("best_val_ppl") is not None:
            points.append((int(run_dir.name.split("_")[1]), float(s["best_val_ppl"]), s["status"]))
    return points


def trial_values(root: Path, variant: str, keys: list[str]) -> list[dict[str, Any]]:
    """Each trial's tuned values (read back from its run's resolved config at ``keys``), best
    validation perplexity, status and number."""
    rows = []
    for run_dir in sorted((root / variant).glob("trial_*")):
        s = _summary(run_dir)
        if not s or s.get("best_val_ppl") is None:
            continue
        values = {key: _setting(s.get("config", {}), key) for key in keys}
        rows.append(
            {
                "number": int(run_dir.name.split("_")[1]),
                "values": values,
                "val_ppl": float(s["best_val_ppl"]),
                "status": s["status"],
            }
        )
    return rows


def _setting(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def retrained_runs(root: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The summaries of a variant's finished retrained seeds. Each is looked for where
    study.json names it and, failing that, at the same ``<variant>/retrain/seed<s>`` under
    ``root`` (a comparison copied or moved elsewhere)."""
    found = []
    for recorded in map(Path, record.get("retrain_dirs", [])):
        s = _summary(recorded)
        if s is None and len(recorded.parts) >= 3:
            s = _summary(root.joinpath(*recorded.parts[-3:]))
        if s and s.get("status") == "completed" and s.get("test_ppl") is not None:
            found.append(s)
    return found


def same_configuration(runs: list[dict[str, Any]]) -> bool:
    """Whether the retrained runs share one configuration: every outcome setting but the
    seed (:func:`rnnreg.config.schema.outcome_settings`). The report never averages runs
    that do not."""
    configs = {
        json.dumps(outcome_settings(r.get("config") or {}), sort_keys=True, default=str)
        for r in runs
    }
    return len(configs) <= 1


def retrain_budget(runs: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The retrained seeds' model and budget (``6 epochs``, ``40 steps``; as the report's
    rows name it), each None where the seeds disagree."""
    models = {r.get("model") for r in runs}
    budgets = {Run(Path(str(r.get("run_dir"))), r).budget for r in runs}
    model = models.pop() if len(models) == 1 else None
    return model, (budgets.pop() if len(budgets) == 1 else None)


def _tuned(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    return ", ".join(
        f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in sorted(params.items())
    )


def _comparison_row(
    variant: str, record: dict[str, Any], runs: list[dict[str, Any]], comparisons: dict[str, Any]
) -> str:
    """One variant's row: its trials, tuned values and retrained seeds against the reference
    (no mean where the retrained runs' configurations differ: they are not one)."""
    if not same_configuration(runs):
        return (
            f"| {variant} | {record['counted']} of {record['trials']} | | "
            f"{_tuned(record.get('best_params'))} | {len(runs)} of {record['retrain_seeds']}: "
            "configurations differ, not averaged | | | |"
        )
    values = [float(r["test_ppl"]) for r in runs]
    budget = retrain_budget(runs)[1]
    states = record.get("states", {})
    interval = mean_interval(values)
    c = comparisons.get(variant)
    versus = (
        ""
        if c is None
        else f"{c.difference:+.2f}" + (f" (p = {c.p_holm:.3g})" if c.p_holm is not None else "")
    )
    best = record.get("best_value")
    return (
        f"| {variant} | {record['counted']} of {record['trials']} "
        f"({states.get('complete', 0)} / {states.get('pruned', 0)}) "
        f"| {record['budget_epochs']} epochs, {record['pruner']} "
        f"| {_tuned(record.get('best_params'))}"
        f"{f' ({best:.2f})' if best is not None else ''} "
        f"| {len(values)} of {record['retrain_seeds']}{f', {budget}' if budget else ''} "
        f"| {f'{statistics.fmean(values):.2f}' if values else ''} "
        f"| {f'{interval.low:.2f} – {interval.high:.2f}' if interval else '–'} "
        f"| {versus} |"
    )


def tuning_section(outputs: Path, out: Path, reference: str) -> tuple[list[str], list[Path]]:
    """The report's lines for every comparison found, and its figures."""
    lines: list[str] = []
    figures: list[Path] = []
    for root, study in find_studies(outputs):
        retrained = {variant: retrained_runs(root, record) for variant, record in study.items()}
        for variant, runs in retrained.items():
            if not same_configuration(runs):
                log.warning(
                    "%s: %s's retrained runs hold different configurations; not averaged "
                    "(retrain them from one study: python -m rnnreg.tune with the same command)",
                    root,
                    variant,
                )
        tests = {
            v: [float(r["test_ppl"]) for r in runs]
            for v, runs in retrained.items()
            if same_configuration(runs)
        }
        ref = reference if reference in tests else next(iter(tests), reference)
        comparisons = {c.variant: c for c in compare_to_reference(tests, ref)}
        lines += [
            "",
            f"## Tuned at an equal budget: `{root.name}` (reference `{ref}`)",
            "",
            "| variant | trials (complete / pruned) | budget per trial | tuned values "
            "(best val ppl) | retrained seeds | test ppl | test 95% CI | vs ref (p Holm) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for variant, record in study.items():
            lines.append(_comparison_row(variant, record, retrained[variant], comparisons))
        model, budget = retrain_budget([r for runs in retrained.values() for r in runs])
        note = budget_note(model, budget) if model and budget else None
        if note:
            lines += ["", f"*{note}.*"]
        for variant, record in study.items():
            if record.get("importances"):
                ranked = ", ".join(f"{k} {v:.2f}" for k, v in record["importances"].items())
                lines.append(f"\n{variant}: parameter importances (fANOVA): {ranked}")
        figures.append(plot_trials(root, study, out / f"tuning_{root.name}.png"))
        if any(record.get("best_params") for record in study.values()):
            figures.append(plot_tuned_values(root, study, out / f"tuned_{root.name}.png"))
    return lines, figures


def plot_trials(root: Path, study: dict[str, Any], path: Path) -> Path:
    """Each trial's best validation perplexity against its number, per variant (pruned
    trials hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for variant in study:
        points = trial_curve(root, variant)
        done = [(n, v) for n, v, status in points if status == "completed"]
        cut = [(n, v) for n, v, status in points if status != "completed"]
        line = ax.plot(*zip(*done, strict=True), "o", label=variant)[0] if done else None
        if cut:
            color = line.get_color() if line is not None else None
            ax.plot(
                *zip(*cut, strict=True), "o", mfc="none", color=color, label=f"{variant} (pruned)"
            )
    ax.set(xlabel="trial", ylabel="best validation perplexity", yscale="log")
    plain_log_ticks(ax.yaxis)
    ax.set(title=f"{root.name}: trials (hollow: pruned)")
    if ax.get_legend_handles_labels()[0]:  # a study with no finished trial draws none
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _log_keys(variant: str) -> set[str]:
    """The keys the variant's search space (conf/tune/space) samples on a log scale."""
    from rnnreg import RnnregError
    from rnnreg.tuning.space import load_space

    try:
        return {param.key for param in load_space(variant) if param.log}
    except RnnregError:
        return set()


def plot_tuned_values(root: Path, study: dict[str, Any], path: Path) -> Path:
    """One panel per tuned key: each trial's value against its best validation perplexity,
    per variant (pruned trials hollow, the best trial starred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({key for record in study.values() for key in record.get("best_params") or {}})
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        log_x = False
        for index, (variant, record) in enumerate(study.items()):
            if key not in (record.get("best_params") or {}):
                continue
            log_x = log_x or key in _log_keys(variant)
            color = f"C{index}"
            for trial in trial_values(root, variant, [key]):
                x = trial["values"][key]
                if x is None:
                    continue
                hollow = trial["status"] != "completed"
                ax.plot(x, trial["val_ppl"], "o", color=color, mfc="none" if hollow else color)
            best = record["best_params"][key]
            ax.plot(best, record["best_value"], "*", ms=14, color=color, mec="k", label=variant)
        ax.set(xlabel=key, ylabel="best val ppl", xscale="log" if log_x else "linear")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{root.name}: values tried (hollow: pruned; star: best)")
    return save_figure(fig, path)
