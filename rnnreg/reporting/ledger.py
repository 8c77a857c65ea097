"""The results ledger: one small tracked file per paper-protocol run, and the table.

    python -m rnnreg.ledger record <run dir> [--name NAME] [--note "why it differs"]
    python -m rnnreg.ledger table                     (make results)

``record`` copies what matters of a run directory (summary.json, metrics.csv, the
command's overrides) into ``results/runs/<name>.json``, and the run's metrics.csv,
summary.json and .hydra/overrides.yaml into ``results/runs/<name>/`` (the curve
:mod:`rnnreg.reporting.curves` draws; what the report reads, ``make compare-report``):
a finished run, or a partial one with its epoch, current validation perplexity and
projected finish. ``table`` writes ``results/README.md`` from those files alone, each
row beside the paper's number with the difference in percent and a verdict:

    difference = 100 (ours - paper) / paper
    paper's validation = per token: a number the Lua scripts printed is converted
                         exactly (rnnreg/reporting/lua_validation.py)
    within the band: |difference| <= 2% (3% for rows the papers give as low confidence)

A row outside the band carries its written cause (``--note``), or says that none was
found yet. Partial rows are listed apart and never averaged into any report.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from rnnreg import PROJECT_ROOT, RnnregError, error_exit
from rnnreg.config.schema import EXECUTION_SETTINGS
from rnnreg.core.files import atomic_write_bytes
from rnnreg.records.provenance import machines_text
from rnnreg.reporting.curves import curve_section, keep_run_files
from rnnreg.reporting.data import paper_val, printed_val
from rnnreg.reporting.lua_validation import val_cell
from rnnreg.reporting.report import Run, load_published, published_for

RESULTS = PROJECT_ROOT / "results"

#: The make targets that run ledger rows, and the variable naming the folder of their runs.
TARGET_FOLDERS = {"ledger-runs": "LEDGER_DIR", "compare-small": "COMPARE_DIR"}


#: Tolerance in percent by the published row's confidence.
BAND = {"low": 3.0}


DEFAULT_BAND = 2.0


#: Epochs whose median rate projects a partial run's finish.
RECENT_EPOCHS = 3


#: The rates in the order data meets them (the rest after, alphabetically).
RATE_ORDER = (
    "p_embedding",
    "p_input",
    "p_weight",
    "p_hidden",
    "p_update",
    "p_memory",
    "zoneout_cell",
    "zoneout_hidden",
    "p_between",
    "p_output",
)


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [line[2:].strip() for line in lines if line.startswith("- ")]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _command(overrides: list[str]) -> str:
    """The command line that reproduces the run (execution settings left out)."""
    execution = {f"trainer.{name}" for name in EXECUTION_SETTINGS}
    shown = [
        o
        for o in overrides
        if not o.startswith("hydra.") and o.split("=", 1)[0].lstrip("+~") not in execution
    ]
    return "python -m rnnreg.train " + " ".join(shown)


def entry_from_run(run_dir: Path, note: str | None = None) -> dict[str, Any]:
    """The ledger entry of ``run_dir``: finished (``completed``) or ``partial``."""
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RnnregError(
            f"{summary_path} is missing or unreadable ({type(exc).__name__}); record a run "
            "directory that rnnreg.train has written"
        ) from exc
    run = Run(run_dir, summary)
    rows = _metrics(run_dir)
    overrides = _overrides(run_dir)
    vals = [float(r["val_ppl"]) for r in rows]
    epochs_done = int(rows[-1]["epoch"]) if rows else 0
    planned = int(summary.get("epochs_planned") or 0)
    elapsed = float(rows[-1]["elapsed_s"]) if rows else None
    completed = summary.get("status") == "completed"
    entry: dict[str, Any] = {
        "status": "completed" if completed else "partial",
        "command": _command(overrides),
        "overrides": overrides,
        "dataset": summary.get("dataset"),
        "model": summary.get("model"),
        "variant": run.variant_label,
        "seed": summary.get("seed"),
        "epochs": epochs_done,
        "epochs_planned": planned,
        "best_val_ppl": min(vals) if vals else summary.get("best_val_ppl"),
        "best_epoch": vals.index(min(vals)) + 1 if vals else summary.get("best_epoch"),
        "last_val_ppl": vals[-1] if vals else None,
        "test_weights": summary.get("test_weights", "best"),
        "test_ppl": summary.get("test_ppl") if completed else None,
        "test_ppl_best": summary.get("test_ppl_best") if completed else None,
        "test_ppl_final": summary.get("test_ppl_final") if completed else None,
        "mc_samples": summary.get("mc_samples") or 0,
        "mc_mask_draw": summary.get("mc_mask_draw"),
        "val_ppl_mc": summary.get("val_ppl_mc") if completed else None,
        "test_ppl_mc": summary.get("test_ppl_mc") if completed else None,
        "wall_time_s": summary.get("wall_time_s") if completed else elapsed,
        "tokens_per_s": summary.get("tokens_per_s"),
        "device": summary.get("device_name") or summary.get("device"),
        "precision": run.precision,
        "cpu_model": summary.get("cpu_model"),
        "machines": summary.get("machines"),
        "torch_version": summary.get("torch_version"),
        "git_commit": summary.get("git_commit"),
        "run_dir": str(run_dir),
        "recorded": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dropout": {k: v for k, v in (summary.get("dropout") or {}).items() if v},
        "note": note,
    }
    if not completed and rows:
        # A partial run's rate is its recent epochs' (median of the last RECENT_EPOCHS):
        # the average since the start counts pauses and earlier thread counts.
        seconds, tokens_per_s = recent_rate(rows)
        entry["projected_remaining_s"] = round(max(planned - epochs_done, 0) * seconds)
        entry["tokens_per_s"] = tokens_per_s
    return entry


def machine_cell(entry: dict[str, Any]) -> str:
    """The CPU a row ran on, or every machine and thread count in turn when its run was
    resumed on others (``machines``, rnnreg/training/state.py)."""
    machines = entry.get("machines") or []
    return machines_text(machines) if len(machines) > 1 else str(entry.get("cpu_model"))


def recent_rate(rows: list[dict[str, str]]) -> tuple[float, float]:
    """Seconds per epoch and tokens/s of a run now: the medians over its last
    :data:`RECENT_EPOCHS` epochs of metrics.csv (``elapsed_s`` differences)."""
    elapsed = [0.0] + [float(r["elapsed_s"]) for r in rows]
    durations = [b - a for a, b in itertools.pairwise(elapsed)][-RECENT_EPOCHS:]
    speeds = [float(r["tokens_per_s"]) for r in rows][-RECENT_EPOCHS:]
    return statistics.median(durations), statistics.median(speeds)


def dropout_cell(rates: dict[str, float] | None) -> str:
    """``{"p_input": 0.35, "p_hidden": 0.2}`` -> ``input 0.35, hidden 0.2``."""
    if not rates:
        return "none" if rates is not None else "–"
    order = {key: i for i, key in enumerate(RATE_ORDER)}
    keys = sorted(rates, key=lambda key: order.get(key, len(order)))
    return ", ".join(f"{key.removeprefix('p_')} {rates[key]:g}" for key in keys)


def record(
    run_dir: Path,
    name: str | None = None,
    note: str | None = None,
    results: Path = RESULTS,
    stopped: str | None = None,
) -> Path:
    """Write (or refresh) ``results/runs/<name>.json``; an earlier note is kept. A partial
    run also records why it ``stopped`` (``exit 143``), with the status its summary says."""
    run_dir = run_dir.absolute()
    name = name or run_dir.name
    path = results / "runs" / f"{name}.json"
    if note is None and path.is_file():
        note = json.loads(path.read_text()).get("note")
    entry = entry_from_run(run_dir, note)
    if entry["status"] != "completed" and stopped:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
        entry["stopped"] = f"{stopped}, {status}"
    atomic_write_bytes(path, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode())
    keep_run_files(run_dir, results, name)  # the curve behind the row, the report's files
    return path


def where(
    name: str, run_dir: Path, results: Path = RESULTS, target: str = "ledger-runs"
) -> list[str]:
    """What ``make <target>`` (``ledger-runs``, ``compare-small``) says before a row: where
    its run lives and how to resume it, and one warning line when the ledger records
    progress in a folder that is gone (a replaced checkout or machine): the row then starts
    again from scratch."""
    run_dir = run_dir.absolute()
    folder = TARGET_FOLDERS.get(target, "the same folder")
    lines = [
        f"{name}: its run lives in {run_dir}; resume it with make {target} (the same "
        f"{folder} or RNNREG_OUTPUTS), or trainer.resume=true hydra.run.dir={run_dir}"
    ]
    path = results / "runs" / f"{name}.json"
    entry = json.loads(path.read_text()) if path.is_file() else {}
    if (run_dir / "checkpoints").is_dir() or entry.get("status") != "partial":
        return lines
    recorded = Path(str(entry.get("run_dir", "")))
    if recorded != run_dir and (recorded / "checkpoints").is_dir():
        return lines + [
            f"warning: {path} records its run in {recorded}, not here; set "
            f"{folder}={recorded.parent} to resume it, or it starts again from scratch"
        ]
    return lines + [
        f"warning: {path} records {entry.get('epochs')} of {entry.get('epochs_planned')} "
        f"epochs at {recorded} ({entry.get('cpu_model')}), which is gone; {name} starts "
        "again from scratch"
    ]


def load_entries(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted((results / "runs").glob("*.json")):
        try:
            entries[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RnnregError(f"{path} is not valid JSON ({exc.msg}); fix or re-record it") from exc
    return entries


def difference(ours: float | None, paper: float | None) -> float | None:
    """100 (ours - paper) / paper, or None when either is missing."""
    if ours is None or paper is None or not math.isfinite(ours):
        return None
    return 100.0 * (ours - paper) / paper


def verdict(diffs: list[float | None], confidence: str, note: str | None) -> str:
    """Within the band of the paper's confidence, or outside it and why (``note``); a row
    without a published number keeps its note too."""
    band = BAND.get(confidence, DEFAULT_BAND)
    measured = [d for d in diffs if d is not None]
    if not measured:
        return f"no published number: {note}" if note else "no published number"
    if all(abs(d) <= band for d in measured):
        return f"within {band:g}%"
    return f"outside {band:g}%: {note}" if note else f"outside {band:g}%: cause not yet found"


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):,.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}%"


def paper_cell(paper: dict[str, str], mc: bool) -> str:
    """``val / test source``: the validation perplexity per token, with the printed one
    where the Lua scripts printed it (rnnreg/reporting/lua_validation.py); the MC rows add
    the paper's sample count."""
    printed = printed_val(paper)
    p_test = float(paper["test_ppl"]) if paper.get("test_ppl") else None
    low = " (low confidence)" if paper.get("confidence") == "low" else ""
    source = f"{paper.get('paper', '')}{low}"
    cell = f"{val_cell(paper_val(paper), printed)} / {_num(p_test, 1)} {source}"
    if mc and paper.get("note"):
        cell += f" ({paper['note']})"  # the paper's sample count
    return cell


def table_rows(entries: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per finished entry and evaluation (standard, and MC when measured)."""
    published = load_published()
    rows = []
    for name, e in entries.items():
        if e["status"] != "completed":
            continue
        evaluations = ["standard"] + (["mc"] if e.get("test_ppl_mc") is not None else [])
        for evaluation in evaluations:
            key = (e["dataset"], e["model"], e["variant"], "", evaluation, "")
            paper = published_for(key, published) or {}
            p_val = paper_val(paper)
            p_test = float(paper["test_ppl"]) if paper.get("test_ppl") else None
            mc = evaluation == "mc"
            ours_val = e.get("val_ppl_mc") if mc else e.get("best_val_ppl")
            ours_test = e.get("test_ppl_mc") if mc else e.get("test_ppl")
            d_val, d_test = difference(ours_val, p_val), difference(ours_test, p_test)
            confidence = paper.get("confidence", "")
            test_cell = _num(ours_test)
            if not mc and e.get("test_ppl_best") is not None:
                test_cell += (
                    f" ({e['test_weights']}; best-val {_num(e['test_ppl_best'])}, "
                    f"final {_num(e['test_ppl_final'])})"
                )
            if mc:
                test_cell += f" (K={e['mc_samples']}, {e.get('mc_mask_draw') or 'window'})"
            rows.append(
                [
                    f"`{name}`",
                    f"`{e['command']}`",
                    dropout_cell(e.get("dropout")),
                    str(e["seed"]),
                    evaluation,
                    f"{_num(ours_val)} (epoch {e['best_epoch']})" if not mc else _num(ours_val),
                    test_cell,
                    paper_cell(paper, mc),
                    f"{_pct(d_val)} / {_pct(d_test)}",
                    verdict([d_val, d_test], confidence, e.get("note")),
                    f"{float(e['wall_time_s']) / 3600:.1f} h" if e.get("wall_time_s") else "–",
                    _num(e.get("tokens_per_s"), 0),
                    f"{e.get('device')}, {e.get('precision') or 'fp32'}, {machine_cell(e)}, "
                    f"torch {e.get('torch_version')}",
                ]
            )
    return rows


def paper_vals(entries: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each entry's published validation perplexity (standard evaluation), if any."""
    published, found = load_published(), {}
    for name, e in entries.items():
        key = (e["dataset"], e["model"], e["variant"], "", "standard", "")
        paper = published_for(key, published) or {}
        found[name] = paper_val(paper)
    return found


def partial_rows(entries: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, e in entries.items():
        if e["status"] == "completed":
            continue
        remaining = e.get("projected_remaining_s")
        rows.append(
            [
                f"`{name}`",
                f"`{e['command']}`",
                dropout_cell(e.get("dropout")),
                str(e["seed"]),
                f"{e['epochs']} / {e['epochs_planned']}",
                _num(e.get("last_val_ppl")),
                _num(e.get("best_val_ppl")),
                f"{remaining / 3600:.1f} h at the last epochs' rate" if remaining else "–",
                _num(e.get("tokens_per_s"), 0),
                f"{e.get('device')}, {e.get('precision') or 'fp32'}, {machine_cell(e)}",
                e.get("stopped") or "–",
                e["recorded"],
            ]
        )
    return rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_table(results: Path = RESULTS) -> Path:
    """Generate ``results/README.md`` from ``results/runs/*.json``."""
    entries = load_entries(results)
    lines = [
        "# Results ledger",
        "",
        "Generated by `make results` (`python -m rnnreg.ledger table`) from `runs/*.json`; "
        "do not edit by hand. Record a run with `python -m rnnreg.ledger record <run dir> "
        "[--note ...]`. Validation is the best epoch's; test uses the weights the preset "
        "names (`final` after the last epoch, as the Lua code of Zaremba and Gal; `best` "
        "validation, as AWD-LSTM), the other is in brackets. Difference = "
        "100 (ours − paper) / paper, validation / test. Band: 2%, 3% for low-confidence "
        "published rows.",
        "",
        "## Finished runs",
        "",
    ]
    finished = table_rows(entries)
    header = [
        "run",
        "command",
        "dropout (p)",
        "seed",
        "eval",
        "val",
        "test",
        "paper val / test",
        "difference",
        "verdict",
        "wall time",
        "tokens/s",
        "machine",
    ]
    lines += _markdown_table(header, finished) if finished else ["None yet."]
    partial = partial_rows(entries)
    lines += ["", "## In progress (partial: never averaged into a report)", ""]
    header = [
        "run",
        "command",
        "dropout (p)",
        "seed",
        "epochs done",
        "current val",
        "best val",
        "projected finish",
        "tokens/s",
        "machine",
        "stopped",
        "recorded",
    ]
    lines += _markdown_table(header, partial) if partial else ["None."]
    lines += curve_section(entries, results, paper_vals(entries))
    notes = [(name, e["note"]) for name, e in entries.items() if e.get("note")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- `{name}`: {note}" for name, note in notes]
    path = results / "README.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The tracked results ledger (results/).")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="copy a run directory's results into results/runs/")
    rec.add_argument("run_dir", type=Path)
    rec.add_argument("--name", help="the entry's name (default: the run directory's name)")
    rec.add_argument(
        "--note",
        help="why the row differs from the paper, or what a reader of a row without one "
        "must know (kept on re-record)",
    )
    rec.add_argument("--stopped", help="why a partial run stopped (make ledger-runs: exit N)")
    sub.add_parser("table", help="write results/README.md from results/runs/*.json")
    at = sub.add_parser("where", help="where a row's run lives, how to resume it, if it is gone")
    at.add_argument("name")
    at.add_argument("run_dir", type=Path)
    at.add_argument("--target", default="ledger-runs", choices=sorted(TARGET_FOLDERS))
    args = parser.parse_args(argv)
    try:
        if args.command == "where":
            print("\n".join(where(args.name, args.run_dir, target=args.target)))
            return 0
        if args.command == "record":
            print(f"recorded: {record(args.run_dir, args.name, args.note, stopped=args.stopped)}")
        print(f"table: {write_table()}")
    except RnnregError as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
