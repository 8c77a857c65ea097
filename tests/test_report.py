"""The report on a synthetic outputs tree: numbers, groups, figures, what is left out."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from rnnreg import RnnregError
from rnnreg.reporting.report import build_report, main


def fake_run(
    root: Path,
    name: str,
    *,
    variant: str,
    seed: int,
    val: float,
    test: float,
    status: str = "completed",
    mc: float | None = None,
    epochs: int = 3,
    precision: str | None = "fp32",
) -> None:
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "status": status,
        "dataset": "ptb",
        "model": "small",
        "variant": variant,
        "seed": seed,
        "best_val_ppl": val,
        "test_ppl": test if status == "completed" else None,
        "tokens_per_s": 1000.0 + seed,
        "lstm_path": "loop" if variant == "gal" else "fused",
        "params": 4_653_200,
        "epochs": epochs,
        "epochs_planned": 3,
        "steps": 10 * epochs,
        "stage": "train",
        "val_ppl_mc": None if mc is None else mc + 1,
        "test_ppl_mc": mc,
        "config": {"trainer": {"epochs": 3, "max_steps": None}},
    }
    if precision is not None:
        summary["precision"] = precision
    (run / "summary.json").write_text(json.dumps(summary))
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["epoch", "step", "lr", "train_ppl", "val_ppl", "tokens_per_s", "elapsed_s", "averaged"]
        )
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, epoch * 10, 1.0, 200, val + 10 * (3 - epoch), 1000, 1, 0])


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    for seed, (val, test) in enumerate([(120.0, 115.0), (122.0, 116.0), (121.0, 114.0)], 1):
        fake_run(
            root / "multiruns" / "a", f"{seed}_none", variant="none", seed=seed, val=val, test=test
        )
    for seed, (val, test, mc) in enumerate([(100.0, 96.0, 95.0), (104.0, 98.0, 96.5)], 1):
        fake_run(
            root / "runs" / "gal",
            f"seed{seed}",
            variant="gal",
            seed=seed,
            val=val,
            test=test,
            mc=mc,
        )
    fake_run(root / "runs", "single", variant="zoneout", seed=1, val=130.0, test=125.0)
    fake_run(
        root / "runs",
        "cut",
        variant="none",
        seed=4,
        val=300.0,
        test=0.0,
        status="interrupted",
        epochs=1,
    )
    fake_run(
        root / "runs",
        "nan",
        variant="zaremba",
        seed=1,
        val=900.0,
        test=0.0,
        status="diverged",
        epochs=1,
    )
    return root


def read_report(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as handle:
        return {(row["variant"], row["evaluation"]): row for row in csv.DictReader(handle)}


def test_report_numbers_equal_hand_computed_means_and_stds(outputs: Path) -> None:
    build_report(outputs)
    rows = read_report(outputs / "report" / "report.csv")
    assert set(rows) == {
        ("none", "standard"),
        ("gal_tied", "standard"),
        ("gal_tied", "mc"),
        ("zoneout", "standard"),
    }
    single = rows[("zoneout", "standard")]
    assert float(single["test_mean"]) == 125.0 and single["test_std"] == ""  # no std of one
    none = rows[("none", "standard")]
    assert none["runs"] == "3" and none["seeds"] == "1 2 3"  # interrupted run not counted
    assert float(none["val_mean"]) == pytest.approx(121.0)
    assert float(none["val_std"]) == pytest.approx(statistics.stdev([120, 122, 121]))
    assert float(none["test_mean"]) == pytest.approx(115.0)
    assert float(none["test_std"]) == pytest.approx(1.0)
    assert none["best_run"].endswith("1_none") and float(none["best_val"]) == 120.0
    assert float(none["paper_test"]) == 114.5 and none["paper"] == "Zaremba2014"
    assert float(none["test_minus_paper"]) == pytest.approx(0.5)
    mc = rows[("gal_tied", "mc")]
    assert float(mc["test_mean"]) == pytest.approx(95.75)
    assert float(mc["val_mean"]) == pytest.approx(96.75)
    assert mc["lstm_path"] == "loop"


def test_markdown_lists_every_group_and_the_runs_left_out(outputs: Path) -> None:
    markdown = build_report(outputs).read_text()
    for fragment in (
        "| ptb | small | none | 3 epochs | standard | fp32 | 3 (1 2 3) | 121.00 ± 1.00",
        "| gal_tied | 3 epochs | standard |",
        "| gal_tied | 3 epochs | mc |",
        "| interrupted | ptb | small | none | 4 | 1 / 3 | 10 |",
        "| zoneout | 3 epochs | standard | fp32 | 1 (1) | 130.00 | 125.00 |",  # no ± from one run
        "| diverged | ptb | small | zaremba | 1 |",
    ):
        assert fragment in markdown, fragment


def test_two_precisions_are_two_rows_never_one_mean(tmp_path: Path) -> None:
    """The same variant in fp32 and in bf16 (and a GPU run from before precision was
    recorded, whose fused cuDNN LSTM ran in TF32) are separate groups."""
    root = tmp_path / "outputs"
    for seed in (1, 2):
        fake_run(root, f"{seed}_fp32", variant="zaremba", seed=seed, val=100, test=96)
        fake_run(
            root, f"{seed}_bf16", variant="zaremba", seed=seed, val=104, test=99, precision="bf16"
        )
    fake_run(root, "old_gpu", variant="zaremba", seed=3, val=101, test=97, precision=None)
    summary = json.loads((root / "old_gpu" / "summary.json").read_text())
    (root / "old_gpu" / "summary.json").write_text(json.dumps({**summary, "device": "cuda"}))
    with open(build_report(root).with_suffix(".csv"), newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["evaluation"] == "standard"]
    by_precision = {r["precision"]: r for r in rows}
    assert set(by_precision) == {"fp32", "bf16", "tf32 (cuDNN default, unrecorded)"}
    assert float(by_precision["fp32"]["test_mean"]) == pytest.approx(96.0)
    assert float(by_precision["bf16"]["test_mean"]) == pytest.approx(99.0)
    assert by_precision["bf16"]["runs"] == "2"


def test_figures_are_valid_png_images(outputs: Path) -> None:
    from PIL import Image

    markdown = build_report(outputs).read_text()
    figures = sorted((outputs / "report" / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["test_ptb_small.png", "val_curve_ptb_small.png"]
    for figure in figures:
        assert f"figures/{figure.name}" in markdown
        with Image.open(figure) as image:
            image.verify()
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_empty_outputs_give_a_clear_message(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RnnregError, match="no runs found"):
        build_report(tmp_path / "empty")
    assert main(["--outputs", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnreg: error: no runs found")
    assert main(["--outputs", str(tmp_path / "missing")]) == 2


def test_a_corrupt_summary_is_skipped_with_a_warning_naming_it(outputs: Path, caplog) -> None:
    """summary.json is written atomically, so an unreadable one is damaged: say which."""
    corrupt = outputs / "runs" / "cut" / "summary.json"
    corrupt.write_text('{"status": "runn')
    with caplog.at_level("WARNING"):
        rows = read_report(build_report(outputs).with_suffix(".csv"))
    assert rows[("none", "standard")]["runs"] == "3"
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and str(corrupt) in lines[0]
