"""The equal-time view: what each compared configuration reached in the training wall time
of the fastest run it is compared with (docs/protocols.md, "Objectives": a two-pass
objective costs about two steps per step, so an equal budget in epochs is not an equal
budget in time).

For one setting of the report (dataset, model, budget, precision; standard evaluation)
and one machine, with T the shortest training wall time among its runs there (the last
``elapsed_s`` of ``metrics.csv``), each configuration's row gives its mean training
tokens/s and wall time, its mean best validation perplexity, and its mean best validation
perplexity over the epochs that ended by T. Only runs trained wholly on one CPU or GPU
model at one thread count (``summary.json``'s ``machines``) are set side by side: one table
per machine on which two or more configurations trained; otherwise the section says why
not. Each table has its figure: validation perplexity against training wall time.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from rnnreg.records.provenance import machine_label, machines_text
from rnnreg.reporting.axes import plain_log_ticks, save_figure, wrap_label
from rnnreg.reporting.data import Group, Run, setting_of

Row = dict[str, Any]


def _epochs(run: Run) -> list[tuple[float, float]]:
    """(elapsed seconds, validation perplexity) at each epoch's end."""
    found = []
    for row in run.metrics():
        try:
            found.append((float(row["elapsed_s"]), float(row["val_ppl"])))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def best_within(run: Run, seconds: float) -> float | None:
    """The best validation perplexity among the epochs that ended within ``seconds``."""
    reached = [ppl for elapsed, ppl in _epochs(run) if elapsed <= seconds and math.isfinite(ppl)]
    return min(reached) if reached else None


def _hardware(run: Run) -> str | None:
    """The machine and thread count a run trained on (those of each process in turn, when
    it was resumed elsewhere); None when it does not record them."""
    s = run.summary
    if s.get("machines"):
        return machines_text(s["machines"])
    name = s.get("device_name") if s.get("device") not in (None, "cpu") else s.get("cpu_model")
    if name is None or s.get("threads") is None:
        return None
    return machine_label(name, s["threads"])


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _by_setting(groups: list[Group]) -> dict[tuple, list[Group]]:
    """The standard-evaluation groups of each setting that has two or more."""
    by_setting: dict[tuple, list[Group]] = {}
    for group in groups:
        if group.key.evaluation == "standard" and group.runs:
            by_setting.setdefault(setting_of(group.key), []).append(group)
    return {setting: members for setting, members in by_setting.items() if len(members) > 1}


def equal_time_rows(groups: list[Group]) -> dict[tuple, tuple[str, list[Row]]]:
    """Per setting and machine on which two or more configurations trained: (the machine and
    T, the rows). A setting with none such has one entry that says why not."""
    found = {}
    for setting, members in sorted(_by_setting(groups).items()):
        tables = machine_runs(members)
        if not tables:
            found[(setting, "")] = (_why_not(members), [])
        for machine, configurations in sorted(tables.items()):
            fastest = _fastest(configurations)
            rows = [_row(name, runs, fastest) for name, runs in configurations.items()]
            found[(setting, machine)] = (f"{machine}; T = {fastest / 3600:.2f} h", rows)
    return found


def machine_runs(members: list[Group]) -> dict[str, dict[str, list[Run]]]:
    """For each machine (and thread count) on which two or more configurations have runs
    trained wholly on it: those runs by configuration."""
    by_machine: dict[str, dict[str, list[Run]]] = {}
    for group in members:
        for run in group.runs:
            machine = _hardware(run)
            one_machine = len(run.summary.get("machines") or ()) <= 1
            if _epochs(run) and machine is not None and one_machine:
                by_machine.setdefault(machine, {}).setdefault(group.name, []).append(run)
    return {machine: found for machine, found in by_machine.items() if len(found) > 1}


def _fastest(configurations: dict[str, list[Run]]) -> float:
    """T: the shortest training wall time (last ``elapsed_s``) among the runs."""
    return min(_epochs(run)[-1][0] for runs in configurations.values() for run in runs)


def _why_not(members: list[Group]) -> str:
    machines = {_hardware(run) for group in members for run in group.runs if _epochs(run)}
    if None in machines:
        return "not shown: a run does not record its machine and threads"
    return (
        f"not shown: the runs come from {len(machines)} machines or thread counts, and on "
        f"none of them did two configurations train ({'; '.join(sorted(machines))})"
    )


def _row(name: str, runs: list[Run], seconds: float) -> Row:
    within = [v for v in (best_within(run, seconds) for run in runs) if v is not None]
    rates = [float(r.summary["tokens_per_s"]) for r in runs if r.summary.get("tokens_per_s")]
    return {
        "name": name,
        "runs": len(runs),
        "tokens_per_s": _mean(rates),
        "wall_h": _mean([_epochs(run)[-1][0] / 3600 for run in runs]),
        "best_val": _mean(
            [
                float(r.summary["best_val_ppl"])
                for r in runs
                if r.summary.get("best_val_ppl") is not None
            ]
        ),
        "best_val_within": _mean(within),
        "reached": len(within),
    }


def equal_time_section(groups: list[Group]) -> list[str]:
    """The Markdown section, one table per setting."""
    found = equal_time_rows(groups)
    if not found:
        return []
    lines = [
        "",
        "## Equal time",
        "",
        "Each configuration's mean best validation perplexity within T, the training "
        "wall time of the fastest run of its setting (read from `metrics.csv` at each "
        "epoch's end), beside its tokens/s and its own wall time. `(n of N)`: runs with "
        "an epoch that ended by T.",
    ]
    for (setting, _), (machine, rows) in found.items():
        dataset, model, budget, _, _, precision = setting
        lines += ["", f"### {dataset} / {model} / {budget} / {precision}: {machine}", ""]
        if not rows:
            continue
        lines += [
            "| variant | runs | tokens/s | wall time (h) | best val ppl | best val ppl within T |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            within = "–" if row["best_val_within"] is None else f"{row['best_val_within']:.2f}"
            if row["best_val_within"] is not None and row["reached"] < row["runs"]:
                within += f" ({row['reached']} of {row['runs']})"
            rate = "–" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:,.0f}"
            best = "–" if row["best_val"] is None else f"{row['best_val']:.2f}"
            lines.append(
                f"| {row['name']} | {row['runs']} | {rate} | {row['wall_h']:.2f} | "
                f"{best} | {within} |"
            )
    return lines


Curve = list[tuple[float, float]]


def equal_time_curves(groups: list[Group]) -> dict[tuple, tuple[float, dict[str, list[Curve]]]]:
    """Per setting and machine of the view's tables: (T in hours, each configuration's runs
    as (training hours, validation perplexity) at each epoch's end)."""
    found = {}
    for setting, members in sorted(_by_setting(groups).items()):
        for machine, configurations in sorted(machine_runs(members).items()):
            curves = {
                name: [[(t / 3600, v) for t, v in _epochs(run)] for run in runs]
                for name, runs in sorted(configurations.items())
            }
            found[(setting, machine)] = (_fastest(configurations) / 3600, curves)
    return found


def plot_equal_time(groups: list[Group], out: Path) -> list[Path]:
    """One figure per table of the view: :func:`equal_time_curves`, a colour per
    configuration, T dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for (setting, machine), (fastest, curves) in equal_time_curves(groups).items():
        dataset, model, budget, _, _, precision = setting
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for index, (name, runs) in enumerate(curves.items()):
            for number, curve in enumerate(runs):
                count = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
                label = wrap_label(f"{name} ({count})") if number == 0 else None
                hours, ppl = zip(*curve, strict=True)
                ax.plot(hours, ppl, marker="o", markersize=3, color=f"C{index % 10}", label=label)
        ax.axvline(fastest, linestyle="--", color="grey", label=f"T = {fastest:.2f} h")
        title = f"{dataset} / {model} / {budget} / {precision}: {machine}"
        ax.set(xlabel="training wall time (h)", ylabel="validation perplexity", yscale="log")
        ax.set(title=title)
        plain_log_ticks(ax.yaxis)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        slug = re.sub(
            r"[^a-z0-9]+", "-", f"{dataset} {model} {budget} {precision} {machine}".lower()
        )
        written.append(save_figure(fig, out / f"equal_time_{slug.strip('-')}.png"))
    return written
