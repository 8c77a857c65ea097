"""The curve behind every ledger row: each run's metrics.csv kept beside its entry
(``results/runs/<name>/metrics.csv``, with the summary.json and overrides the report
reads), drawn next to the paper's final number and, where a published log gives one,
next to the authors' own curve, epoch by epoch.

    difference_e = 100 (ours_e − log_e) / log_e     for every epoch e both have

for the validation perplexity, and for the training perplexity (with dropout on) where
the log gives one. A log whose validation perplexity the Lua scripts' run_valid()
printed (column ``lua_valid_bptt``) is compared per token, printed ** (L / ⌊L⌋)
(rnnreg/reporting/lua_validation.py); the printed number stands beside it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rnnreg.core.files import atomic_write_bytes
from rnnreg.reporting.axes import plain_log_ticks
from rnnreg.reporting.lua_validation import per_token_from_printed

REFERENCE = Path(__file__).resolve().parent / "reference"


def entry_folder(results: Path, name: str) -> Path:
    return results / "runs" / name


#: What the report reads of a run (rnnreg/reporting/data.py: ``Run``), kept beside its
#: ledger entry so that ``make compare-report`` rebuilds a row from tracked files alone.
RUN_FILES = ("metrics.csv", "summary.json", ".hydra/overrides.yaml")


def keep_run_files(run_dir: Path, results: Path, name: str) -> list[Path]:
    """Copy the :data:`RUN_FILES` that ``run_dir`` has beside the entry ``name``
    (``results/runs/<name>/``); return the copies."""
    kept = []
    for relative in RUN_FILES:
        source = run_dir / relative
        if source.is_file():
            target = entry_folder(results, name) / relative
            atomic_write_bytes(target, source.read_bytes())
            kept.append(target)
    return kept


def read_curve(path: Path, column: str = "val_ppl") -> dict[int, float]:
    """``{epoch: column}`` of a metrics.csv or a ``curve_*.csv``; epochs whose cell is
    empty (or a file without the column) are left out."""
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {int(row["epoch"]): float(row[column]) for row in rows if row.get(column)}


def experiment_of(entry: dict[str, Any]) -> str | None:
    for override in entry.get("overrides") or []:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "experiment":
            return value
    return None


def reference_curve(entry: dict[str, Any], column: str = "val_ppl") -> dict[int, float]:
    """The published curve of the entry's preset (``reference/curve_<name>.csv`` here), as
    printed."""
    experiment = experiment_of(entry)
    return read_curve(REFERENCE / f"curve_{experiment}.csv", column) if experiment else {}


def per_token_curve(entry: dict[str, Any]) -> dict[int, float]:
    """The published validation curve per token: where the Lua scripts printed an epoch
    (its ``lua_valid_bptt``), printed ** (L / ⌊L⌋); else the number as printed."""
    printed, bptt = reference_curve(entry), reference_curve(entry, "lua_valid_bptt")
    return {
        epoch: per_token_from_printed(value, int(bptt[epoch])) if epoch in bptt else value
        for epoch, value in printed.items()
    }


def _cells(epoch: int, ours: dict[int, float], log: dict[int, float]) -> str:
    """``log | ours | difference`` of one epoch, dashes where either lacks it."""
    if epoch not in ours or epoch not in log:
        return "– | – | –"
    diff = 100 * (ours[epoch] - log[epoch]) / log[epoch]
    return f"{log[epoch]:.2f} | {ours[epoch]:.2f} | {diff:+.1f}%"


def comparison_lines(
    name: str,
    ours: dict[int, float],
    log: dict[int, float],
    ours_train: dict[int, float] | None = None,
    log_train: dict[int, float] | None = None,
    log_printed: dict[int, float] | None = None,
) -> list[str]:
    """A Markdown table: epoch, the log's validation perplexity (as printed, and per token
    when ``log_printed`` differs from ``log``), ours, the difference to ``log``; and the same
    for the training perplexity when the log has it."""
    train = bool(log_train)
    printed = log_printed is not None and log_printed != log
    head, rule = "| epoch | log val | ours val | difference |", "|---:|---:|---:|---:|"
    if printed:
        head = "| epoch | log val printed | log val per token | ours val | difference |"
        rule += "---:|"
    if train:
        head, rule = head + " log train | ours train | difference |", rule + "---:|---:|---:|"
    lines = [f"### `{name}` against its published log", "", head, rule]
    for epoch in sorted(e for e in ours if e in log):
        row = f"| {epoch} | {_cells(epoch, ours, log)} |"
        if printed:
            row = f"| {epoch} | {(log_printed or {})[epoch]:.2f} | {_cells(epoch, ours, log)} |"
        if train:
            row += f" {_cells(epoch, ours_train or {}, log_train or {})} |"
        lines.append(row)
    return lines


def draw(
    name: str, ours: dict[int, float], log: dict[int, float], paper_val: float | None, path: Path
) -> Path:
    """Validation perplexity per epoch: ours, the published log's, the paper's final."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.plot(list(ours), list(ours.values()), marker="o", markersize=3, label="ours")
    if log:
        axes.plot(list(log), list(log.values()), linestyle="--", label="authors' log, per token")
    if paper_val is not None:
        label = f"paper {paper_val:.1f}"
        axes.axhline(paper_val, color="grey", linestyle=":", label=label)
    axes.set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title=name)
    plain_log_ticks(axes.yaxis)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def curve_section(
    entries: dict[str, dict[str, Any]], results: Path, paper_vals: dict[str, float | None]
) -> list[str]:
    """The ledger's "Curves" section: a figure per entry with a kept metrics.csv, and a
    table for each entry whose preset has a published log."""
    figures, tables = [], []
    for name in entries:
        ours = read_curve(entry_folder(results, name) / "metrics.csv")
        if not ours:
            continue
        log = per_token_curve(entries[name])
        path = draw(name, ours, log, paper_vals.get(name), results / "figures" / f"{name}.png")
        figures.append(f"![{name}]({path.relative_to(results).as_posix()})")
        if log:
            metrics = entry_folder(results, name) / "metrics.csv"
            train = (read_curve(metrics, "train_ppl"), reference_curve(entries[name], "train_ppl"))
            printed = reference_curve(entries[name])
            tables += ["", *comparison_lines(name, ours, log, *train, log_printed=printed)]
    if not figures:
        return []
    lines = [
        "",
        "## Curves",
        "",
        "Validation perplexity per epoch from each entry's `runs/<name>/metrics.csv`, beside "
        "the paper's final validation number and, where the authors published a log, their "
        "curve, both per token (a number the Lua scripts printed is converted: "
        "rnnreg/reporting/lua_validation.py; the log's training perplexity is defined in "
        "rnnreg/reporting/reference/README.md).",
        "",
    ]
    return lines + figures + tables
