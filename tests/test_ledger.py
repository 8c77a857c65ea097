"""The results ledger: entries from run directories, the generated table and verdicts."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from rnnreg.reporting.ledger import (
    difference,
    entry_from_run,
    machine_cell,
    record,
    verdict,
    write_table,
)
from rnnreg.reporting.lua_validation import lua_windows, per_token_from_printed

#: PTB validation rows at batch 20 less one (3,688 - 1): the steps run_valid() can predict.
LUA_STEPS = 73_760 // 20 - 1


def lua_per_token(printed: float, bptt: int) -> float:
    """printed ** (L / floor(L)), L = LUA_STEPS / bptt, written out apart from the module."""
    windows = LUA_STEPS / bptt
    return printed ** (windows / math.floor(windows))


def fake_run(root: Path, status: str, val: float, test: float | None, epochs: int) -> Path:
    run_dir = root / f"zaremba_medium_{status}"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- experiment=zaremba_medium\n- trainer.threads=1\n- hydra.run.dir=/x\n"
        "- trainer.auto_resume=true\n- trainer.checkpoint_every_s=60\n"
    )
    rows = ["epoch,step,lr,train_ppl,val_ppl,tokens_per_s,elapsed_s,averaged,asgd_switch_epoch"]
    for epoch in range(1, epochs + 1):
        rows.append(f"{epoch},{epoch * 10},1,100,{val + epochs - epoch},1500,{3600 * epoch},0,")
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = {
        "status": status,
        "dataset": "ptb",
        "model": "medium",
        "variant": "zaremba",
        "seed": 1,
        "epochs": epochs,
        "epochs_planned": 39,
        "best_val_ppl": val,
        "best_epoch": epochs,
        "test_weights": "final",
        "test_ppl": test,
        "test_ppl_final": test,
        "test_ppl_best": None if test is None else test + 0.5,
        "mc_samples": 0,
        "tokens_per_s": 1514.0,
        "wall_time_s": 3600.0 * epochs,
        "device_name": "cpu",
        "cpu_model": "AMD EPYC",
        "torch_version": "2.13.0",
        "dropout": {"p_input": 0.5, "p_between": 0.5, "p_output": 0.5, "p_hidden": 0.0},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_verdicts_and_differences() -> None:
    assert difference(88.0, 86.2) == 100 * (88.0 - 86.2) / 86.2
    assert verdict([1.9, -1.0], "high", None) == "within 2%"
    assert verdict([2.1, 0.0], "high", None) == "outside 2%: cause not yet found"
    assert verdict([2.9, 0.0], "low", None) == "within 3%"
    assert verdict([5.0, None], "high", "schedule") == "outside 2%: schedule"
    assert verdict([None, None], "", None) == "no published number"
    assert verdict([None, None], "", "timing") == "no published number: timing"


def test_record_and_table(tmp_path: Path) -> None:
    results = tmp_path / "results"
    done = fake_run(tmp_path, "completed", 86.5, 82.9, 39)
    far = fake_run(tmp_path / "b", "completed", 95.0, 90.0, 39)
    partial = fake_run(tmp_path, "running", 120.0, None, 3)
    record(done, "zaremba_medium_s1", results=results)
    record(far, "zaremba_medium_far", note="the lr schedule differs", results=results)
    record(partial, "zaremba_medium_partial", results=results)
    record(far, "zaremba_medium_far", results=results)  # refresh keeps the note
    entry = json.loads((results / "runs" / "zaremba_medium_far.json").read_text())
    assert entry["note"] == "the lr schedule differs"
    assert entry["command"] == "python -m rnnreg.train experiment=zaremba_medium"

    partial_entry = entry_from_run(partial)
    assert partial_entry["status"] == "partial" and partial_entry["test_ppl"] is None
    assert partial_entry["epochs"] == 3 and partial_entry["last_val_ppl"] == 120.0
    assert partial_entry["projected_remaining_s"] == 36 * 3600

    text = write_table(results).read_text()
    finished, in_progress = text.split("## In progress")
    row = next(line for line in finished.splitlines() if "zaremba_medium_s1" in line)
    # Zaremba's 86.2 was printed by main.lua's run_valid() (bptt 35): 87.45 per token
    paper = lua_per_token(86.2, 35)
    assert f"{paper:.1f} (printed 86.2) / 82.7 Zaremba2014" in row
    assert f"{100 * (86.5 - paper) / paper:+.1f}% / +0.2%" in row
    assert "within 2%" in row and "final; best-val 83.40, final 82.90" in row
    assert "| input 0.5, between 0.5, output 0.5 |" in row  # the rates, zeros left out
    far_row = next(line for line in finished.splitlines() if "zaremba_medium_far" in line)
    assert "outside 2%: the lr schedule differs" in far_row
    assert "zaremba_medium_partial" not in finished
    assert "3 / 39" in in_progress and "36.0 h at the last epochs' rate" in in_progress


def test_partial_projection_uses_recent_epochs(tmp_path: Path) -> None:
    """A paused epoch (or one at fewer threads) does not set the projected finish."""
    run_dir = fake_run(tmp_path, "running", 120.0, None, 5)
    metrics = run_dir / "metrics.csv"
    header, *rows = metrics.read_text().splitlines()
    # epochs of 1 h, except epoch 2 that took 10 h (paused) at a tenth of the speed
    elapsed, fixed = 0.0, []
    for epoch, row in enumerate(rows, start=1):
        cells = row.split(",")
        elapsed += 36000.0 if epoch == 2 else 3600.0
        cells[5] = "150" if epoch == 2 else "1500"
        cells[6] = str(elapsed)
        fixed.append(",".join(cells))
    metrics.write_text("\n".join([header, *fixed]) + "\n")
    entry = entry_from_run(run_dir)
    assert entry["projected_remaining_s"] == 34 * 3600
    assert entry["tokens_per_s"] == 1500.0


def test_mc_row_beside_the_papers_mc_number(tmp_path: Path) -> None:
    """Gal's MC row: our K and mask draw next to the paper's number and sample count."""
    results = tmp_path / "results"
    run_dir = fake_run(tmp_path, "completed", 82.0, 80.0, 39)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(
        variant="gal_untied",
        mc_samples=100,
        mc_mask_draw="stream",
        val_ppl_mc=80.5,
        test_ppl_mc=78.6 * 1.01,
    )
    (run_dir / "summary.json").write_text(json.dumps(summary))
    record(run_dir, "gal_medium_untied_s1", results=results)
    text = write_table(results).read_text()
    mc_row = next(line for line in text.splitlines() if "| mc |" in line)
    assert "79.39 (K=100, stream)" in mc_row
    assert "– / 78.6 Gal2016 (MC dropout 1000 samples)" in mc_row
    assert "+1.0%" in mc_row and "within 2%" in mc_row
    standard = next(line for line in text.splitlines() if "| standard |" in line)
    assert f"{lua_per_token(81.9, 35):.1f} (printed 81.9) / 79.7 Gal2016" in standard
    assert "1000 samples" not in standard


def test_each_entry_keeps_its_curve_and_a_logged_preset_is_compared_epoch_by_epoch(
    tmp_path: Path,
) -> None:
    """metrics.csv beside the entry; a figure per entry; for experiment=gal_large_log a
    table of our validation perplexity against Gal's own log (rnnreg/reporting/reference)."""
    run_dir = fake_run(tmp_path, "partial", val=290.0, test=None, epochs=2)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text().replace("zaremba_medium", "gal_large_log"))
    results = tmp_path / "results"
    record(run_dir, name="gal_large_log_s1", results=results)
    kept = results / "runs" / "gal_large_log_s1" / "metrics.csv"
    assert kept.read_text() == (run_dir / "metrics.csv").read_text()
    readme = write_table(results).read_text()
    assert "![gal_large_log_s1](figures/gal_large_log_s1.png)" in readme
    assert (results / "figures" / "gal_large_log_s1.png").read_bytes()[:4] == b"\x89PNG"
    # epoch 1: ours 291 (val + epochs - epoch) against the log's 292.797 as printed, which
    # is lua_per_token(292.797, 35) = 298.28 per token
    # train: ours 100 at every epoch; the log has none for epoch 1 (its ring buffer then
    # leaves out the first steps ours includes), 303.823 for epoch 2
    one, two = lua_per_token(292.797, 35), lua_per_token(197.633, 35)
    assert f"| 1 | 292.80 | {one:.2f} | 291.00 | {100 * (291 - one) / one:+.1f}% |" in readme
    assert f"| 2 | 197.63 | {two:.2f} | 290.00 | {100 * (290 - two) / two:+.1f}% |" in readme
    assert "| 303.82 | 100.00 | -67.1% |" in readme


@pytest.mark.parametrize("bptt", [20, 35])
def test_the_lua_validation_figure_converts_to_the_per_token_perplexity(bptt: int) -> None:
    """run_valid() of Zaremba's and Gal's Lua scripts, step by step: ``for i = 1, len``
    with len = (rows - 1) / bptt a fraction visits floor(len) windows, and the sum of their
    mean losses is divided by len. The conversion gives back exp(mean window loss), the
    perplexity of every token those full windows predict."""
    rng = random.Random(bptt)
    windows = LUA_STEPS / bptt
    assert lua_windows(bptt) == windows and windows != math.floor(windows)
    losses, i = [], 1
    while i <= windows:  # Lua's numeric for: i = 1, 2, ... while i <= len
        losses.append(rng.uniform(4.0, 6.0))
        i += 1
    printed = math.exp(sum(losses) / windows)
    per_token = math.exp(sum(losses) / len(losses))
    assert printed < per_token
    assert per_token_from_printed(printed, bptt) == pytest.approx(per_token, rel=1e-12)


def test_lua_windows_refuses_an_empty_split() -> None:
    with pytest.raises(ValueError, match="bptt=0"):
        lua_windows(0)


def test_a_partial_row_records_why_it_stopped_and_a_gone_run_is_said_to_start_again(
    tmp_path: Path,
) -> None:
    """make ledger-runs: a run stopped by a signal is recorded with its epoch and the reason;
    before the next attempt, a row whose recorded folder is gone gets one warning line."""
    from rnnreg.reporting.ledger import where

    results = tmp_path / "results"
    run_dir = fake_run(tmp_path / "old", "interrupted", 120.0, None, 3)
    record(run_dir, "zaremba_medium_s1", results=results, stopped="exit 143")
    entry = json.loads((results / "runs" / "zaremba_medium_s1.json").read_text())
    assert entry["stopped"] == "exit 143, interrupted" and entry["epochs"] == 3
    assert "| exit 143, interrupted |" in write_table(results).read_text()
    here = tmp_path / "ledger" / "zaremba_medium_s1"
    (run_dir / "checkpoints").mkdir()  # the recorded folder, elsewhere, holds the checkpoint
    lines = where("zaremba_medium_s1", here, results)
    assert len(lines) == 2 and str(here) in lines[0] and "resume" in lines[0]
    assert "records its run in" in lines[1] and f"LEDGER_DIR={run_dir.parent}" in lines[1]
    import shutil

    shutil.rmtree(run_dir)  # gone with its checkout
    gone = where("zaremba_medium_s1", here, results)
    assert len(gone) == 2 and gone[1].startswith("warning:") and "which is gone" in gone[1]
    assert "3 of 39 epochs" in gone[1] and "starts again from scratch" in gone[1]
    (here / "checkpoints").mkdir(parents=True)  # a run here to resume: nothing to warn of
    assert len(where("zaremba_medium_s1", here, results)) == 1


def test_make_ledger_runs_keeps_its_runs_under_rnnreg_outputs(tmp_path: Path) -> None:
    """LEDGER_DIR follows $RNNREG_OUTPUTS (a replaced checkout keeps the checkpoints), every
    row says where it lives, moon_embedding_medium is a row, and a failed run is recorded."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    shown = subprocess.run(
        ["make", "-n", "ledger-runs", f"RNNREG_OUTPUTS={tmp_path}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{tmp_path}/ledger/" in shown and "/outputs/ledger" not in shown
    assert "moon_embedding_medium" in shown and "rnnreg.ledger where" in shown
    assert "|| rc=$?" in shown and '--stopped "exit $rc"' in shown


def test_a_row_resumed_on_other_machines_names_each_of_them(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_dir = fake_run(tmp_path, "running", 120.0, None, 3)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["machines"] = ["Intel Xeon, 2 thread(s)", "AMD EPYC, 2 thread(s)"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    record(run_dir, "zaremba_medium_moved", results=results)
    in_progress = write_table(results).read_text().split("## In progress")[1]
    row = next(line for line in in_progress.splitlines() if "zaremba_medium_moved" in line)
    assert "cpu, fp32, Intel Xeon, 2 thread(s) then AMD EPYC, 2 thread(s) |" in row
    assert machine_cell({"cpu_model": "AMD EPYC", "machines": ["AMD EPYC, 1 thread(s)"]}) == (
        "AMD EPYC"
    )


def test_the_comparison_report_is_rebuilt_from_the_ledgers_copies(tmp_path: Path) -> None:
    """make compare-report: a recorded row keeps summary.json, metrics.csv and its overrides
    beside its entry, and the report of results/runs/compare_* equals the report of the run
    folders themselves (run names aside), the ledger's other rows left out."""
    from rnnreg.reporting.report import build_report
    from tests.test_report import fake_run as report_run
    from tests.test_report import preset

    runs, results = tmp_path / "outputs", tmp_path / "results"
    rows = {"zaremba": preset("experiment=zaremba_small", "variant=zaremba")}
    rows["zaremba_objective_fd"] = preset(
        "experiment=zaremba_small", "variant=zaremba", "objective=fd"
    )
    for row, config in rows.items():
        for seed, test in [(1, 115.0), (2, 117.5), (3, 113.0)]:
            if row != "zaremba":
                test -= 6.0
            report_run(
                runs, f"{row}_s{seed}", variant="zaremba", seed=seed, val=test + 4.0,
                test=test, config=config,
            )  # fmt: skip
            run_dir = runs / f"{row}_s{seed}"
            summary = json.loads((run_dir / "summary.json").read_text())
            summary["machines"] = ["Intel Xeon, 2 thread(s)"]
            (run_dir / "summary.json").write_text(json.dumps(summary))
            (run_dir / ".hydra").mkdir()
            overrides = "- experiment=zaremba_small\n- variant=zaremba\n"
            if row != "zaremba":
                overrides += "- objective=fd\n"
            (run_dir / ".hydra" / "overrides.yaml").write_text(overrides + f"- seed={seed}\n")
            record(run_dir, name=f"compare_{row}_s{seed}", results=results)
    other = fake_run(tmp_path / "paper", "completed", 86.5, 82.9, 39)
    record(other, name="zaremba_medium_s1", results=results)
    kept = results / "runs" / "compare_zaremba_objective_fd_s2"
    for name in ("summary.json", "metrics.csv", ".hydra/overrides.yaml"):
        assert (kept / name).read_bytes() == (runs / "zaremba_objective_fd_s2" / name).read_bytes()

    direct = build_report(runs, tmp_path / "direct", reference="zaremba")
    ledger = build_report(results / "runs", tmp_path / "ledger", "zaremba", "compare_*")
    text = ledger.read_text()
    assert text.replace("compare_", "") == direct.read_text()
    ours = ledger.with_suffix(".csv").read_text()
    ours = ours.replace(f"{results / 'runs'}/compare_", f"{runs}/")
    assert ours == direct.with_suffix(".csv").read_text()
    assert "zaremba+fd" in text and "## Equal time" in text and "medium" not in text


def test_make_compare_small_skips_rows_the_ledger_holds_and_names_its_own_folder(
    tmp_path: Path,
) -> None:
    """A replaced machine loses COMPARE_DIR, not the ledger: a row completed in results/runs
    is not trained again, a gone partial row is warned of in compare-small's words, and the
    report is built from the ledger's copies."""
    import subprocess

    from rnnreg.reporting.ledger import where

    repo = Path(__file__).resolve().parent.parent
    shown = subprocess.run(
        ["make", "-n", "compare-small", f"RNNREG_OUTPUTS={tmp_path}", "COMPARE_SEEDS=1"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{tmp_path}/compare-small/" in shown
    assert """grep -qs '"status": "completed"' results/runs/compare_$name.json""" in shown
    assert "--target compare-small" in shown
    assert "rnnreg.report --outputs results/runs --runs 'compare_*'" in shown
    results = tmp_path / "results"
    run_dir = fake_run(tmp_path / "gone", "interrupted", 130.0, None, 2)
    record(run_dir, "compare_zaremba_s1", results=results, stopped="exit 143")
    import shutil

    shutil.rmtree(run_dir)
    lines = where("compare_zaremba_s1", tmp_path / "x", results, target="compare-small")
    assert "make compare-small (the same COMPARE_DIR" in lines[0]
    assert "which is gone" in lines[1] and "LEDGER_DIR" not in "".join(lines)


def test_every_compare_row_composes_its_own_preset_once(tmp_path: Path) -> None:
    """The recipe passes experiment=zaremba_small unless a row names its own: LSTM rows at
    lr 1, GRU rows on zaremba_small_gru (model.cell=gru, lr 0.5), never two experiments."""
    import subprocess

    from rnnreg.reporting.data import composed_config

    repo = Path(__file__).resolve().parent.parent
    shown = subprocess.run(
        ["make", "-s", "compare-small", "PY=echo", "STAMP=", "COMPARE_SEEDS=99"]
        + [f"COMPARE_DIR={tmp_path}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    trains = [line.split()[2:] for line in shown.splitlines() if "-m rnnreg.train" in line]
    assert len(trains) == 10
    cells = []
    for words in trains:
        assert sum(word.startswith("experiment=") for word in words) == 1, words
        launched = tuple(w for w in words if not w.startswith(("trainer.", "hydra.", "seed=")))
        config = composed_config(launched)
        assert config is not None and config["trainer"]["epochs"] == 13
        cells.append((config["model"]["cell"], config["optim"]["lr"]))
    assert cells == [("lstm", 1.0)] * 5 + [("gru", 0.5)] * 5
