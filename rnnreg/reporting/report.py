"""Turn every run under ``outputs/`` into the perplexity table: ``python -m rnnreg.report``.

Reads files only (``summary.json`` and ``metrics.csv`` at any depth), never live
objects. Finished runs are grouped by dataset x model x variant x evaluation (standard,
MC dropout, cache pointer, dynamic) and summarised as mean ± sample standard deviation
over seeds with a 95% interval of the mean, next to the published numbers
(``rnnreg/reporting/reference/published.csv``); each variant is compared with a reference
variant by Welch's t-test with Holm's correction (:mod:`rnnreg.reporting.significance`).
Interrupted, diverged and unfinished runs are listed apart and never averaged in. Writes
``report.md``, ``report.csv`` and PNG figures to ``<outputs>/report/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rnnreg import PROJECT_ROOT, RnnregError, error_exit
from rnnreg.reporting.data import (
    Run,
    compare_groups,
    find_runs,
    group_runs,
    load_published,
    published_for,
    summarise,
)
from rnnreg.reporting.equal_time import equal_time_section, plot_equal_time
from rnnreg.reporting.render import plot_figures, write_csv, write_markdown
from rnnreg.reporting.tuning import tuning_section

__all__ = ["Run", "build_report", "load_published", "main", "published_for"]


def build_report(
    outputs: Path, out_dir: Path | None = None, reference: str = "none", match: str = "*"
) -> Path:
    """Write the report for the runs under ``outputs`` whose folder name matches the glob
    ``match``; return the Markdown file."""
    if not outputs.is_dir():
        raise RnnregError(
            f"{outputs} does not exist; run some experiments first "
            "(python -m rnnreg.train ...) or set OUTPUTS=<dir>"
        )
    runs = find_runs(outputs, match)
    if not runs:
        named = "" if match == "*" else f" in a folder named {match}"
        raise RnnregError(
            f"no runs found under {outputs} (no summary.json{named}); run some "
            "experiments first (python -m rnnreg.train ...) or set OUTPUTS=<dir>"
        )
    out_dir = out_dir or outputs / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    published = load_published()
    rows = [summarise(group, published) for group in groups]
    comparisons = compare_groups(groups, rows, reference)
    others = [run for run in runs if run.status != "completed"]
    figures = plot_figures(groups, rows, out_dir / "figures") if groups else []
    figures += plot_equal_time(groups, out_dir / "figures")
    tuning, tuning_figures = tuning_section(outputs, out_dir / "figures", reference)
    write_csv(rows, out_dir / "report.csv")
    markdown = out_dir / "report.md"
    sections = tuning + equal_time_section(groups)
    write_markdown(rows, others, figures + tuning_figures, markdown, comparisons, sections)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise every run into report.md/csv.")
    parser.add_argument(
        "--outputs",
        type=Path,
        default=Path(
            os.environ.get("OUTPUTS")
            or os.environ.get("RNNREG_OUTPUTS")
            or PROJECT_ROOT / "outputs"
        ),
        help="folder searched for summary.json (default: $OUTPUTS, $RNNREG_OUTPUTS or outputs/)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: <outputs>/report)"
    )
    parser.add_argument(
        "--runs",
        default="*",
        metavar="GLOB",
        help="only run folders whose name matches GLOB (default: every run)",
    )
    parser.add_argument(
        "--reference",
        default="none",
        help="the variant every other of its cell is compared with (GRU rows: gru:<it>; "
        "default: none)",
    )
    args = parser.parse_args(argv)
    try:
        markdown = build_report(args.outputs.resolve(), args.out, args.reference, args.runs)
    except RnnregError as exc:
        return error_exit(exc)
    print(f"report: {markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
