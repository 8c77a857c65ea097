"""The perplexity report written out: ``report.md``, ``report.csv`` and the figures."""

from __future__ import annotations

import csv
import hashlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from rnnreg.reporting.axes import plain_log_ticks, save_figure, wrap_label
from rnnreg.reporting.data import (
    REPORT_COLUMNS,
    Group,
    Run,
    Setting,
    budget_note,
    pooled_bins,
    row_name,
    shown_path,
)
from rnnreg.reporting.lua_validation import val_cell
from rnnreg.reporting.significance import Comparison, sentence


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _ci(r: dict[str, Any]) -> str:
    if r["test_ci_low"] is None:
        return "–"
    return f"{r['test_ci_low']:.2f} – {r['test_ci_high']:.2f}"


def _vs(r: dict[str, Any]) -> str:
    if r["reference"] is None:
        return ""
    if r["p_holm"] is None:
        return f"{r['test_minus_reference']:+.2f} (no test: < 2 seeds)"
    mark = "†" if r["p_holm"] < 0.05 else ""
    return f"{r['test_minus_reference']:+.2f} (p = {r['p_holm']:.3g}){mark}"


def _counted(cell: str, covered: int | None, runs: int) -> str:
    """A mean's cell, with ``(n of N)`` where it covers fewer runs than the row."""
    if not cell or covered is None or covered >= runs:
        return cell
    return f"{cell} ({covered} of {runs})"


def eval_cell(r: dict[str, Any]) -> str:
    """The evaluation of a sub-row and its settings: ``mc (K=100)``."""
    settings = r.get("evaluation_settings")
    return f"{r['evaluation']} ({settings})" if settings else str(r["evaluation"])


def paper_cell(r: dict[str, Any]) -> str:
    """The paper's validation / test beside a row at its preset (with both K where only K
    differs), else why not, in italics."""
    if not r["paper"]:
        return f"*{r['paper_note']}*" if r.get("paper_note") else ""
    star = "*" if r["paper_confidence"] == "low" else ""
    cell = (
        f"{val_cell(r['paper_val'], r['paper_val_printed'])} / "
        f"{_fmt(r['paper_test'], 1) or '–'}{star} ({r['paper']})"
    )
    return f"{cell}; {r['paper_note']}" if r.get("paper_note") else cell


def _seeds(r: dict[str, Any]) -> str:
    """``2 (1 2)``, and the seeds run twice, counted once: ``⚠ seed 1 twice``."""
    cell = f"{r['runs']} ({r['seeds']})"
    if r["duplicate_seeds"]:
        cell += f" ⚠ seed {r['duplicate_seeds']} twice, counted once"
    return cell


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in REPORT_COLUMNS})


def write_markdown(
    rows: list[dict[str, Any]],
    others: list[Run],
    figures: list[Path],
    path: Path,
    comparisons: dict[Setting, list[Comparison]] | None = None,
    sections: list[str] | None = None,
) -> None:
    lines = [
        "# Perplexity report",
        "",
        "Finished runs, mean ± sample standard deviation over seeds, and the 95% interval "
        "of the mean test perplexity (t interval; bootstrap from 10 seeds). `vs ref`: the "
        "difference in mean test perplexity to the reference variant of the same cell "
        "(GRU rows to `gru:<reference>`), with Welch's p-value corrected by Holm's method "
        "over the variants of the setting and cell; `†` marks p < 0.05. "
        "`*` marks a published number of low confidence (quoted from memory; verify). "
        "A variant's settings in parentheses are what its trained configuration changed "
        "from its preset; an evaluation's settings in parentheses (`mc (K=100)`) make "
        "sub-rows of one trained configuration. A paper's number stands only beside a row "
        "whose training configuration and evaluation settings are its preset's "
        "(published.csv `preset`); otherwise the column says why not. `(n of N)`: a mean "
        "over fewer runs than the row's.",
        "",
        "| dataset | model | variant | budget | eval | precision | runs (seeds) | val ppl "
        "| test ppl | test 95% CI | vs ref (p) | best run (val / test) | tokens/s | LSTM path "
        "| params | paper (val / test) | test − paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        val = _counted(_pm(r["val_mean"], r["val_std"]), r.get("val_runs"), r["runs"])
        test = _counted(_pm(r["test_mean"], r["test_std"]), r.get("test_runs"), r["runs"])
        lines.append(
            f"| {r['dataset']} | {r['model']} | {row_name(r)} | {r['budget']} "
            f"| {eval_cell(r)} | {r['precision']} | "
            f"{_seeds(r)} | {val} | {test} | {_ci(r)} | {_vs(r)} | "
            f"`{Path(r['best_run']).name}` "
            f"({_fmt(r['best_val'])} / {_fmt(r['best_test'])}) | {_fmt(r['tokens_per_s'], 0)} | "
            f"{r['lstm_path']} | {_fmt(r['params'])} | {paper_cell(r)} "
            f"| {_fmt(r['test_minus_paper'])} |"
        )
    lines += calibration_table(rows)
    for setting, found in (comparisons or {}).items():
        dataset, model, budget, evaluation, evaluated, precision = setting
        evaluation += f" ({evaluated})" if evaluated else ""
        references = " and ".join(f"`{name}`" for name in dict.fromkeys(c.reference for c in found))
        lines += [
            "",
            f"## {dataset} / {model} / {budget} / {evaluation} / {precision}: against {references}",
            "",
        ]
        note = budget_note(model, budget)
        if note:
            lines += [f"*{note}.*", ""]
        lines += [f"- {sentence(c)}" for c in found]
    if others:
        lines += [
            "",
            "## Not averaged: interrupted, diverged or unfinished runs",
            "",
            "| status | dataset | model | variant | seed | epochs done / planned | steps "
            "| best val ppl | run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in others:
            s = run.summary
            status = "running or crashed" if run.status == "running" else run.status
            lines.append(
                f"| {status} | {s.get('dataset')} | {s.get('model')} | "
                f"{run.variant_label} | {s.get('seed')} | "
                f"{s.get('epochs')} / {s.get('epochs_planned', '?')} | {s.get('steps', '')} | "
                f"{_fmt(s.get('best_val_ppl'))} | `{shown_path(run.path)}` |"
            )
    lines += sections or []
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{figure.stem}](figures/{figure.name})" for figure in figures]
    path.write_text("\n".join(lines) + "\n")


def calibration_table(rows: list[dict[str, Any]]) -> list[str]:
    """The test split's calibration and uncertainty (``eval.uncertainty``), per group."""
    measured = [r for r in rows if r["test_acc"] is not None]
    if not measured:
        return []
    lines = [
        "",
        "## Calibration and uncertainty (test)",
        "",
        "Means over the runs of a group that measured them (`(n of N)` where fewer than "
        "the group's runs did). Accuracy: top-1; Brier: multiclass; ECE: top label, 15 "
        "equal-width bins; MI: mutual information of the MC samples (BALD); AUROC: how "
        "well a score ranks the errors above the correct predictions (0.5: no better than "
        "chance), for 1 − max probability, predictive entropy and MI.",
        "",
        "| dataset | model | variant | eval | test ppl | accuracy | Brier | ECE | MI "
        "| AUROC max p | AUROC entropy | AUROC MI |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured:
        cells = [_fmt(r[f"test_{m}"], 4) for m in ("acc", "brier", "ece", "mi")]
        cells += [_fmt(r[f"test_auroc_{m}"], 3) for m in ("maxprob", "entropy", "mi")]
        cells = [_counted(cell, r.get("calibration_runs"), r["runs"]) for cell in cells]
        lines.append(
            f"| {r['dataset']} | {r['model']} | {row_name(r)} | {eval_cell(r)} "
            f"| {_fmt(r['test_mean'])} | " + " | ".join(cells) + " |"
        )
    return lines


def plot_reliability(groups: list[Group], out: Path) -> list[Path]:
    """A reliability diagram per group with calibration bins: accuracy against
    confidence per bin (bars, the runs pooled), the standard evaluation and MC dropout
    side by side, the diagonal of perfect calibration, the runs' mean ECE in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for group in groups:
        if group.key[4] != "standard":
            continue
        panels = [(e, pooled_bins(group.runs, name), key) for e, name, key in PANELS]
        panels = [panel for panel in panels if panel[1] is not None]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
        for ax, (evaluation, bins, ece_key) in zip(axes[0], panels, strict=True):
            width = 1 / len(bins["count"])
            centres = [(i + 0.5) * width for i in range(len(bins["count"]))]
            ax.bar(centres, bins["accuracy"], width=width, edgecolor="black", label="accuracy")
            ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
            eces = [float(r.summary[ece_key]) for r in group.runs if r.summary.get(ece_key)]
            ece = f"ECE {statistics.fmean(eces):.3f}" if eces else ""
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)")
            ax.set(ylabel="accuracy", title=f"{evaluation}: {ece}")
            ax.legend(fontsize=7, loc="upper left")
        title = f"{group.key[0]} / {group.key[1]} / {group.name} ({group.key[3]}): test"
        fig.suptitle(wrap_label(title, 100), fontsize=9)
        evaluated = hashlib.sha1(group.key.evaluated.encode()).hexdigest()[:4]
        slug = "_".join((group.key[0], group.key[1], group.key[2], group.key[6][:8], evaluated))
        written.append(save_figure(fig, out / f"reliability_{slug}.png"))
    return written


#: The reliability diagram's panels: (title, summary bins, the runs' ECE in summary.json).
PANELS = (("standard", "test", "test_ece"), ("MC dropout", "test_mc", "test_ece_mc"))


def plot_figures(groups: list[Group], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Validation perplexity per epoch (mean and band over seeds), and test perplexity
    per variant with error bars next to the paper's value; one pair per dataset x model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    settings = sorted({(g.key[0], g.key[1]) for g in groups})
    for dataset, model in settings:
        curves = trained_once([g for g in groups if g.key[:2] == (dataset, model)])
        fig, ax = plt.subplots(figsize=(9, 4.5))
        last = 1
        for group in curves:
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in group.runs:
                for row in run.metrics():
                    by_epoch[int(row["epoch"])].append(float(row["val_ppl"]))
            epochs = sorted(by_epoch)
            if not epochs:
                continue
            last = max(last, epochs[-1])
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            lows = [min(by_epoch[e]) for e in epochs]
            highs = [max(by_epoch[e]) for e in epochs]
            label = wrap_label(f"{group.name} ({group.key[3]})")
            if len(epochs) == 1:  # one epoch: a marker with its min–max bar
                spread = [[means[0] - lows[0]], [highs[0] - means[0]]]
                ax.errorbar(epochs, means, yerr=spread, fmt="o", capsize=4, label=label)
                continue
            ax.plot(epochs, means, marker="o", markersize=3, label=label)
            ax.fill_between(epochs, lows, highs, alpha=0.2)
        ax.set(
            xlabel="epoch",
            ylabel="validation perplexity",
            yscale="log",
            title=f"{dataset} / {model}: validation perplexity (band: min–max over seeds)",
        )
        epoch_axis(ax, last)
        plain_log_ticks(ax.yaxis)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the curves
        written.append(save_figure(fig, out / f"val_curve_{dataset}_{model}.png"))

        bars = [
            r
            for r in rows
            if (r["dataset"], r["model"]) == (dataset, model) and r["test_mean"] is not None
        ]
        fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(bars)), 4.5))
        draw_test_points(ax, bars)
        ax.set(ylabel="test perplexity", title=f"{dataset} / {model}: test perplexity")
        written.append(save_figure(fig, out / f"test_{dataset}_{model}.png"))
    return written + plot_reliability(groups, out)


def trained_once(groups: list[Group]) -> list[Group]:
    """One group per trained configuration (its standard evaluation's first sub-row): the
    validation curve is training's, the same for every evaluation of the weights."""
    seen, once = set(), []
    for group in groups:
        trained = (*group.key[:4], group.key.precision, group.key.digest)
        if group.key.evaluation == "standard" and trained not in seen:
            seen.add(trained)
            once.append(group)
    return once


def epoch_axis(ax: Any, last: int) -> None:
    """Whole epochs 1..``last`` on the x axis, with half an epoch of margin: integer ticks
    even for a single epoch (MaxNLocator's default asks for two integers in view)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def draw_test_points(ax: Any, rows: list[dict[str, Any]]) -> None:
    """One column per row, its label under it: our mean test perplexity (± std) just left
    of the column's centre, the paper's just right; the axis spans half a column beyond
    the first and the last, whatever their number."""
    xs = list(range(len(rows)))
    ax.errorbar(
        [x - 0.1 for x in xs],
        [r["test_mean"] for r in rows],
        yerr=[r["test_std"] or 0.0 for r in rows],
        fmt="o",
        capsize=4,
        label="rnnreg",
    )
    paper = [(x + 0.1, r["paper_test"]) for x, r in zip(xs, rows, strict=True) if r["paper_test"]]
    if paper:
        ax.plot(*zip(*paper, strict=True), "s", label="paper (after its full training protocol)")
    labels = [f"{wrap_label(row_name(r), 24)}\n{r['budget']}\n{eval_cell(r)}" for r in rows]
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.legend(fontsize=8)
