"""The results ledger: entries from run directories, the generated table and verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from rnnreg.reporting.ledger import difference, entry_from_run, record, verdict, write_table


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
    assert "86.2 / 82.7 Zaremba2014" in row and "+0.3% / +0.2%" in row
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
    assert "81.9 / 79.7 Gal2016" in standard and "1000 samples" not in standard


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
    # epoch 1: ours 291 (val + epochs - epoch) against the log's 292.797
    # train: ours 100 at every epoch; the log has none for epoch 1 (its ring buffer then
    # leaves out the first steps ours includes), 303.823 for epoch 2
    assert "| 1 | 292.80 | 291.00 | -0.6% | – | – | – |" in readme
    assert "| 2 | 197.63 | 290.00 | +46.7% | 303.82 | 100.00 | -67.1% |" in readme
