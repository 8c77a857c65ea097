"""Turn every run under ``outputs/`` into the perplexity table: ``python -m rnnreg.report``.

Reads files only (``summary.json`` and ``metrics.csv`` at any depth), never live
objects. Finished runs are grouped by dataset x model x variant x evaluation (standard
or MC dropout) and summarised as mean ± sample standard deviation over seeds, next to
the published numbers (``rnnreg/reference/published.csv``). Interrupted, diverged and
unfinished runs are listed apart and never averaged in. Writes ``report.md``,
``report.csv`` and PNG figures to ``<outputs>/report/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnreg import PROJECT_ROOT, RnnregError

Key = tuple[str, str, str, str, str]  # dataset, model, variant, budget, evaluation
PUBLISHED = Path(__file__).resolve().parent / "reference" / "published.csv"
REPORT_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "budget",
    "evaluation",
    "runs",
    "seeds",
    "val_mean",
    "val_std",
    "test_mean",
    "test_std",
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

    def key(self, evaluation: str) -> Key:
        s = self.summary
        return (
            str(s.get("dataset")),
            str(s.get("model")),
            self.variant_label,
            self.budget,
            evaluation,
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
        suffix = "_mc" if self.key[4] == "mc" else ""
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
        except (OSError, json.JSONDecodeError):
            continue  # being written by a running job: it will be read next time
        runs.append(Run(path, summary))
    return sorted(runs, key=lambda run: str(run.path))


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[Key, Group] = {}
    for run in runs:
        if run.status != "completed":
            continue
        evaluations = ["standard"]
        if run.summary.get("test_ppl_mc") is not None:
            evaluations.append("mc")
        for evaluation in evaluations:
            key = run.key(evaluation)
            groups.setdefault(key, Group(key)).runs.append(run)
    return [groups[key] for key in sorted(groups)]


def load_published(path: Path = PUBLISHED) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def published_for(key: Key, rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The first published row for this dataset, model, variant and evaluation."""
    dataset, model, variant, _budget, evaluation = key
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
    mc = group.key[4] == "mc"
    val_mean, val_std = _mean_std(group.values("val_ppl" if mc else "best_val_ppl"))
    test_mean, test_std = _mean_std(group.values("test_ppl"))
    best = min(group.runs, key=lambda r: r.summary.get("best_val_ppl") or math.inf)
    rates = [float(r.summary["tokens_per_s"]) for r in group.runs if r.summary.get("tokens_per_s")]
    paper = published_for(group.key, published)
    paper_test = float(paper["test_ppl"]) if paper and paper["test_ppl"] else None
    paper_val = float(paper["val_ppl"]) if paper and paper["val_ppl"] else None
    suffix = "_mc" if mc else ""
    return {
        "dataset": group.key[0],
        "model": group.key[1],
        "variant": group.key[2],
        "budget": group.key[3],
        "evaluation": group.key[4],
        "runs": len(group.runs),
        "seeds": " ".join(str(s) for s in sorted({r.summary.get("seed") for r in group.runs})),
        "val_mean": val_mean,
        "val_std": val_std,
        "test_mean": test_mean,
        "test_std": test_std,
        "best_run": str(best.path),
        "best_val": best.summary.get("best_val_ppl" if not suffix else "val_ppl_mc"),
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


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in REPORT_COLUMNS})


def write_markdown(
    rows: list[dict[str, Any]], others: list[Run], figures: list[Path], path: Path
) -> None:
    lines = [
        "# Perplexity report",
        "",
        "Finished runs, mean ± sample standard deviation over seeds. `*` marks a "
        "published number of low confidence (quoted from memory; verify).",
        "",
        "| dataset | model | variant | budget | eval | runs (seeds) | val ppl | test ppl "
        "| best run (val / test) | tokens/s | LSTM path | params | paper (val / test) "
        "| test − paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        star = "*" if r["paper_confidence"] == "low" else ""
        paper = (
            (
                f"{_fmt(r['paper_val'], 1) or '–'} / {_fmt(r['paper_test'], 1) or '–'}{star} "
                f"({r['paper']})"
            )
            if r["paper"]
            else ""
        )
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['variant']} | {r['budget']} "
            f"| {r['evaluation']} | "
            f"{r['runs']} ({r['seeds']}) | {_pm(r['val_mean'], r['val_std'])} | "
            f"{_pm(r['test_mean'], r['test_std'])} | `{Path(r['best_run']).name}` "
            f"({_fmt(r['best_val'])} / {_fmt(r['best_test'])}) | {_fmt(r['tokens_per_s'], 0)} | "
            f"{r['lstm_path']} | {_fmt(r['params'])} | {paper} | {_fmt(r['test_minus_paper'])} |"
        )
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
                f"{_fmt(s.get('best_val_ppl'))} | `{run.path}` |"
            )
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{figure.stem}](figures/{figure.name})" for figure in figures]
    path.write_text("\n".join(lines) + "\n")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_figures(groups: list[Group], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Validation perplexity per epoch (mean and band over seeds), and test perplexity
    per variant with error bars next to the paper's value; one pair per dataset x model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plain = FuncFormatter(lambda value, _: f"{value:.0f}")  # 160, not 1.6 x 10^2

    out.mkdir(parents=True, exist_ok=True)
    written = []
    settings = sorted({(g.key[0], g.key[1]) for g in groups})
    for dataset, model in settings:
        curves = [g for g in groups if g.key[:2] == (dataset, model) and g.key[4] == "standard"]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for group in curves:
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in group.runs:
                for row in run.metrics():
                    by_epoch[int(row["epoch"])].append(float(row["val_ppl"]))
            epochs = sorted(by_epoch)
            if not epochs:
                continue
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            lows = [min(by_epoch[e]) for e in epochs]
            highs = [max(by_epoch[e]) for e in epochs]
            ax.plot(
                epochs, means, marker="o", markersize=3, label=f"{group.key[2]} ({group.key[3]})"
            )
            ax.fill_between(epochs, lows, highs, alpha=0.2)
        ax.set(
            xlabel="epoch",
            ylabel="validation perplexity",
            yscale="log",
            title=f"{dataset} / {model}: validation perplexity (band: min–max over seeds)",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the curves
        written.append(_save(fig, out / f"val_curve_{dataset}_{model}.png"))

        bars = [
            r
            for r in rows
            if (r["dataset"], r["model"]) == (dataset, model) and r["test_mean"] is not None
        ]
        fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(bars)), 4.5))
        labels = [f"{r['variant']}\n{r['budget']}\n{r['evaluation']}" for r in bars]
        xs = list(range(len(bars)))
        ax.errorbar(
            [x - 0.1 for x in xs],
            [r["test_mean"] for r in bars],
            yerr=[r["test_std"] or 0.0 for r in bars],
            fmt="o",
            capsize=4,
            label="rnnreg",
        )
        paper = [
            (x + 0.1, r["paper_test"])
            for x, r in zip(xs, bars, strict=True)
            if r["paper_test"] is not None
        ]
        if paper:
            ax.plot(
                [p[0] for p in paper],
                [p[1] for p in paper],
                "s",
                label="paper (after its full training protocol)",
            )
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set(ylabel="test perplexity", title=f"{dataset} / {model}: test perplexity")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / f"test_{dataset}_{model}.png"))
    return written


def build_report(outputs: Path, out_dir: Path | None = None) -> Path:
    """Write the report for the runs under ``outputs``; return the Markdown file."""
    if not outputs.is_dir():
        raise RnnregError(
            f"{outputs} does not exist; run some experiments first "
            "(python -m rnnreg.train ...) or set OUTPUTS=<dir>"
        )
    runs = find_runs(outputs)
    if not runs:
        raise RnnregError(
            f"no runs found under {outputs} (no summary.json); run some "
            "experiments first (python -m rnnreg.train ...) or set OUTPUTS=<dir>"
        )
    out_dir = out_dir or outputs / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    published = load_published()
    rows = [summarise(group, published) for group in groups]
    others = [run for run in runs if run.status != "completed"]
    figures = plot_figures(groups, rows, out_dir / "figures") if groups else []
    write_csv(rows, out_dir / "report.csv")
    markdown = out_dir / "report.md"
    write_markdown(rows, others, figures, markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise every run into report.md/csv.")
    parser.add_argument(
        "--outputs",
        type=Path,
        default=Path(os.environ.get("OUTPUTS") or PROJECT_ROOT / "outputs"),
        help="folder searched for summary.json (default: $OUTPUTS or outputs/)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: <outputs>/report)"
    )
    args = parser.parse_args(argv)
    try:
        markdown = build_report(args.outputs.resolve(), args.out)
    except RnnregError as exc:
        print(f"rnnreg: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
