"""The report of scripts/gpu_check.sh, from the files of its folder; standard library only,
so that it runs on a machine where the check's dependencies are missing.

    python scripts/gpu_report.py <out dir> <seconds taken>    # report.md on stdout
    python scripts/gpu_report.py --missing    # the distributions of gpu_pack.txt not importable
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parent / "gpu_pack.txt"


def missing() -> list[str]:
    """``distribution==version`` of every line of gpu_pack.txt whose module is absent, or
    present at another version where the line says ``exact``."""
    rows = [line.split() for line in PACK.read_text().splitlines()]
    rows = [row for row in rows if len(row) >= 2 and not row[0].startswith("#")]
    return [row[0] for row in rows if not present(row[0], row[1], "exact" in row[2:])]


def present(dist: str, module: str, exact: bool) -> bool:
    import importlib.metadata

    if importlib.util.find_spec(module) is None:
        return False
    name, _, version = dist.partition("==")
    try:
        return not exact or importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def steps(out: Path) -> list[list[str]]:
    path = out / "steps.tsv"
    if not path.is_file():
        return []
    return [(line.split("\t") + ["", ""])[:3] for line in path.read_text().splitlines() if line]


def large_run(out: Path) -> list[str]:
    """zaremba_large's epochs, tokens/s and projected wall time, from its files."""
    run = out / "zaremba_large"
    summary = (
        json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    )
    rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
    log_path = out / "zaremba_large.log"
    log = log_path.read_text() if log_path.exists() else ""
    rates = [float(m) for m in re.findall(r"([0-9.]+) tok/s", log)]
    rate = summary.get("tokens_per_s") or (rates[-1] if rates else None)
    planned = summary.get("epochs_planned") or 55
    tokens = summary.get("tokens_per_epoch") or 929_580
    if not rate:
        return ["- not measured: " + (log.strip().splitlines() or ["no log"])[-1]]
    lines = [
        f"- epochs done: {len(rows)} of {planned}; steps {summary.get('steps')}; "
        f"status {summary.get('status', 'not started')}"
    ]
    lines += [
        f"- epoch {r['epoch']}: val ppl {float(r['val_ppl']):.2f}, "
        f"{float(r['tokens_per_s']):,.0f} tokens/s"
        for r in rows
    ]
    lines.append(
        f"- training tokens/s: {rate:,.0f}; projected {planned} epochs: "
        f"{planned * tokens / rate / 3600:.2f} h of training (validation excluded)"
    )
    return lines


def report(out: Path, took: str) -> str:
    machine = out / "machine.txt"
    described = machine.read_text().strip() if machine.exists() else ""
    lines = ["# gpu-check", "", described or "(no machine description: see the machine step)", ""]
    lines += [
        f"- wall time: {took} s",
        "",
        "## steps",
        "",
        "| step | status | note |",
        "|---|---|---|",
    ]
    lines += [
        f"| {step} | {status} | {note.replace('|', '/')} |" for step, status, note in steps(out)
    ]
    bench = out / "bench.md"
    lines += ["", "## bench", "", bench.read_text() if bench.exists() else "(no table)", ""]
    lines += ["## experiment=zaremba_large", "", *large_run(out)]
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:] == ["--missing"]:
        print(" ".join(missing()))
        return 0
    print(report(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "?"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
