"""The report's equal-time view (rnnreg/reporting/equal_time.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rnnreg.reporting.data import find_runs, group_runs
from rnnreg.reporting.equal_time import (
    equal_time_curves,
    equal_time_rows,
    equal_time_section,
    plot_equal_time,
)
from tests.test_report import fake_run


def _timed(
    root: Path,
    name: str,
    variant: str,
    seed: int,
    curve: list[tuple[float, float]],
    cpu: str = "Intel(R) Xeon(R) Processor",
    machines: list[str] | None = None,
) -> None:
    """A finished run whose epochs ended at the given (elapsed seconds, val ppl)."""
    fake_run(
        root,
        name,
        variant=variant,
        seed=seed,
        val=min(v for _, v in curve),
        test=100.0,
        epochs=len(curve),
    )
    summary_path = root / name / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(cpu_model=cpu, threads=1, device="cpu")
    if machines is not None:
        summary["machines"] = machines
    summary_path.write_text(json.dumps(summary))
    with open(root / name / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["epoch", "step", "lr", "train_ppl", "val_ppl", "tokens_per_s", "elapsed_s", "averaged"]
        )
        for epoch, (elapsed, val) in enumerate(curve, 1):
            writer.writerow([epoch, 10 * epoch, 1.0, 200, val, 1000, elapsed, 0])


def test_each_row_is_read_at_the_fastest_runs_wall_time(tmp_path: Path) -> None:
    for seed in (1, 2):  # one pass per step: fast
        _timed(tmp_path, f"z{seed}", "zaremba", seed, [(100, 150), (200, 130), (300, 120 + seed)])
    for seed in (1, 2):  # two passes per step: twice as slow, better per epoch
        _timed(tmp_path, f"g{seed}", "gal", seed, [(200 + seed, 140), (400, 115), (600, 105)])
    found = equal_time_rows(group_runs(find_runs(tmp_path)))
    [(machine, rows)] = found.values()
    assert machine == "Intel(R) Xeon(R) Processor, 1 thread(s); T = 0.08 h"
    by_name = {row["name"]: row for row in rows}
    assert by_name["zaremba"]["best_val_within"] == 121.5  # mean of 121, 122
    assert by_name["gal_tied"]["best_val_within"] == 140.0  # only epoch 1 ended by T = 301
    assert by_name["gal_tied"]["best_val"] == 105.0 and by_name["gal_tied"]["wall_h"] == 600 / 3600
    text = "\n".join(equal_time_section(group_runs(find_runs(tmp_path))))
    assert "| gal_tied | 2 | 1,002 | 0.17 | 105.00 | 140.00 |" in text


def test_runs_from_two_machines_are_not_set_side_by_side(tmp_path: Path) -> None:
    _timed(tmp_path, "z1", "zaremba", 1, [(100, 150)])
    _timed(tmp_path, "g1", "gal", 1, [(200, 140)], cpu="AMD EPYC 7B13")
    [(machine, rows)] = equal_time_rows(group_runs(find_runs(tmp_path))).values()
    assert rows == [] and machine.startswith("not shown: the runs come from 2 machines")


def test_runs_that_do_not_record_their_machine_are_not_compared(tmp_path: Path) -> None:
    fake_run(tmp_path, "z1", variant="zaremba", seed=1, val=120.0, test=110.0)
    fake_run(tmp_path, "g1", variant="gal", seed=1, val=110.0, test=100.0)
    [(machine, rows)] = equal_time_rows(group_runs(find_runs(tmp_path))).values()
    assert rows == [] and machine == "not shown: a run does not record its machine and threads"


def test_a_run_resumed_on_another_machine_is_not_timed_against_the_others(
    tmp_path: Path,
) -> None:
    xeon = "Intel(R) Xeon(R) Processor, 1 thread(s)"
    _timed(tmp_path, "z1", "zaremba", 1, [(100, 150)], machines=[xeon])
    _timed(tmp_path, "g1", "gal", 1, [(200, 140)], machines=[xeon, "AMD EPYC 7B13, 1 thread(s)"])
    [(machine, rows)] = equal_time_rows(group_runs(find_runs(tmp_path))).values()
    assert rows == [] and machine.startswith("not shown: the runs come from 2 machines")
    assert f"{xeon} then AMD EPYC 7B13, 1 thread(s)" in machine


def test_runs_that_record_one_machine_each_are_compared(tmp_path: Path) -> None:
    xeon = "Intel(R) Xeon(R) Processor, 1 thread(s)"
    _timed(tmp_path, "z1", "zaremba", 1, [(100, 150)], machines=[xeon])
    _timed(tmp_path, "g1", "gal", 1, [(200, 140)], machines=[xeon])
    [(machine, rows)] = equal_time_rows(group_runs(find_runs(tmp_path))).values()
    assert machine == f"{xeon}; T = 0.03 h" and len(rows) == 2


def test_each_machine_gets_its_own_table_of_the_runs_trained_wholly_on_it(
    tmp_path: Path,
) -> None:
    xeon, epyc = "Intel(R) Xeon(R) Processor, 2 thread(s)", "AMD EPYC 7B13, 2 thread(s)"
    _timed(tmp_path, "z1", "zaremba", 1, [(100, 150), (200, 130)], machines=[xeon])
    _timed(tmp_path, "g1", "gal", 1, [(150, 140), (300, 120)], machines=[xeon])
    _timed(tmp_path, "z2", "zaremba", 2, [(300, 150), (600, 131)], machines=[epyc])
    _timed(tmp_path, "g2", "gal", 2, [(400, 141), (800, 119)], machines=[epyc])
    _timed(tmp_path, "z3", "zaremba", 3, [(50, 150), (90, 100)], machines=[xeon, epyc])
    found = equal_time_rows(group_runs(find_runs(tmp_path)))
    by_machine = {header.split(";")[0]: rows for header, rows in found.values()}
    assert set(by_machine) == {xeon, epyc}  # z3, resumed elsewhere, is in neither
    assert [header for header, _ in found.values()] == [
        f"{epyc}; T = 0.17 h",
        f"{xeon}; T = 0.06 h",
    ]
    xeon_rows = {row["name"]: row for row in by_machine[xeon]}
    assert xeon_rows["zaremba"]["runs"] == 1 and xeon_rows["zaremba"]["best_val_within"] == 130.0
    assert xeon_rows["gal_tied"]["best_val_within"] == 140.0  # by T = 200 s: epoch 1 only
    epyc_rows = {row["name"]: row for row in by_machine[epyc]}
    assert epyc_rows["gal_tied"]["best_val_within"] == 141.0 and epyc_rows["zaremba"]["runs"] == 1


def test_each_table_has_its_figure_of_perplexity_against_training_time(tmp_path: Path) -> None:
    """The curves behind the figure: each run's (hours, val ppl) per epoch, by configuration,
    with T; one PNG per machine's table, none for a setting of one configuration."""
    xeon, epyc = "Intel(R) Xeon(R) Processor, 2 thread(s)", "AMD EPYC 7B13, 2 thread(s)"
    runs = tmp_path / "runs"
    _timed(runs, "z1", "zaremba", 1, [(360, 150), (720, 130)], machines=[xeon])
    _timed(runs, "z2", "zaremba", 2, [(720, 149), (1080, 128)], machines=[xeon])
    _timed(runs, "g1", "gal", 1, [(1800, 140), (3600, 120)], machines=[xeon])
    _timed(runs, "z3", "zaremba", 3, [(300, 150), (600, 131)], machines=[epyc])
    _timed(runs, "g3", "gal", 3, [(400, 141), (800, 119)], machines=[epyc])
    groups = group_runs(find_runs(runs))
    found = {machine: value for (_, machine), value in equal_time_curves(groups).items()}
    assert set(found) == {xeon, epyc}
    fastest, curves = found[xeon]
    assert fastest == 0.2  # z1's 720 s
    assert curves["zaremba"] == [[(0.1, 150), (0.2, 130)], [(0.2, 149), (0.3, 128)]]
    assert curves["gal_tied"] == [[(0.5, 140), (1.0, 120)]]
    figures = plot_equal_time(groups, tmp_path / "figures")
    assert sorted(path.name for path in figures) == [
        "equal_time_ptb-small-3-epochs-fp32-amd-epyc-7b13-2-thread-s.png",
        "equal_time_ptb-small-3-epochs-fp32-intel-r-xeon-r-processor-2-thread-s.png",
    ]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures)
    alone = tmp_path / "alone"
    _timed(alone, "z1", "zaremba", 1, [(360, 150)], machines=[xeon])
    assert plot_equal_time(group_runs(find_runs(alone)), tmp_path / "none") == []
