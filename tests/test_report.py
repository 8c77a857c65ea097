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
    # Zaremba's small validation was printed by main.lua's run_valid() at bptt 20: it
    # divides 184 windows' sum by 3687 / 20 = 184.35 (rnnreg/reporting/lua_validation.py)
    assert float(none["paper_val_printed"]) == 120.7
    assert float(none["paper_val"]) == pytest.approx(120.7 ** (184.35 / 184))
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
        f"| {120.7 ** (184.35 / 184):.1f} (printed 120.7) / 114.5 (Zaremba2014) |",
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


def composed_config(*overrides: str) -> dict:
    """The resolved config a run of these overrides records in its summary.json."""
    from hydra import compose, initialize_config_dir

    from rnnreg.config.schema import CONF_DIR, as_plain_dict, register, to_run_config

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return as_plain_dict(to_run_config(cfg))


def swept_run(root: Path, name: str, overrides: list[str], seed: int, test: float) -> Path:
    """A finished run as a Hydra job writes it: its overrides and its resolved config."""
    fake_run(root, name, variant="zaremba", seed=seed, val=test + 4, test=test)
    run = root / name
    summary = json.loads((run / "summary.json").read_text())
    summary["config"] = composed_config(*overrides, f"seed={seed}")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".hydra").mkdir()
    lines = [f"- {o}" for o in [*overrides, f"seed={seed}", "trainer.threads=1"]]
    (run / ".hydra" / "overrides.yaml").write_text("\n".join(lines) + "\n")
    return run


def test_a_rate_sweep_is_one_row_per_rate_labelled_by_its_change(tmp_path: Path) -> None:
    """variant=zaremba variant.p_input=0.2,0.6 seed=1,2: two rows of two seeds, never one
    mean of four; the preset's own runs are a third row, and only it faces the paper."""
    root = tmp_path / "outputs"
    base = ["variant=zaremba", "model=small"]
    tests = {"0.2": (110.0, 112.0), "0.6": (130.0, 134.0)}
    for rate, values in tests.items():
        for seed, test in enumerate(values, 1):
            swept_run(root, f"p{rate}_s{seed}", [*base, f"variant.p_input={rate}"], seed, test)
    swept_run(root, "preset_s1", base, 1, 120.0)
    with open(build_report(root).with_suffix(".csv"), newline="") as handle:
        rows = {r["settings"]: r for r in csv.DictReader(handle) if r["evaluation"] == "standard"}
    assert set(rows) == {"variant.p_input=0.2", "variant.p_input=0.6", ""}
    for rate, values in tests.items():
        row = rows[f"variant.p_input={rate}"]
        assert row["runs"] == "2" and row["seeds"] == "1 2"
        assert float(row["test_mean"]) == pytest.approx(statistics.fmean(values))
        assert row["paper"] == ""
    assert rows[""]["runs"] == "1" and rows[""]["variant"] == "zaremba"


def test_tuned_rates_are_labelled_to_four_digits_and_never_merged_by_it(tmp_path: Path) -> None:
    """A tuned rate is shown as 0.1027, not 0.10272912357197912; two rates that round alike
    are still two rows, told apart by their settings' digest."""
    root = tmp_path / "outputs"
    base = ["variant=zaremba", "model=small"]
    for name, rate in (("a", 0.10272912357197912), ("b", 0.10270000000000001), ("c", 0.3)):
        swept_run(root, name, [*base, f"variant.p_input={rate}"], 1, 100.0)
    with open(build_report(root).with_suffix(".csv"), newline="") as handle:
        labels = [r["settings"] for r in csv.DictReader(handle) if r["evaluation"] == "standard"]
    assert len(labels) == 3 and len(set(labels)) == 3
    assert "variant.p_input=0.3" in labels
    rounded = sorted(label for label in labels if label.startswith("variant.p_input=0.1027"))
    assert rounded[0] == "variant.p_input=0.1027"
    assert rounded[1].startswith("variant.p_input=0.1027, #")


def test_runs_differing_only_in_how_they_ran_are_one_group(tmp_path: Path) -> None:
    """Threads, device, compiling and the path of the data change no outcome setting."""
    root = tmp_path / "outputs"
    swept_run(root, "a", ["variant=zaremba", "model=small"], 1, 100.0)
    swept_run(root, "b", ["variant=zaremba", "model=small", "model.compile=false"], 2, 102.0)
    summary = json.loads((root / "b" / "summary.json").read_text())
    summary["config"]["dataset"]["data_dir"] = "/elsewhere"
    summary["config"]["trainer"]["threads"] = 7
    (root / "b" / "summary.json").write_text(json.dumps(summary))
    swept_run(root, "c", ["variant=zaremba", "model=small", "optim.lr=0.5"], 1, 140.0)
    with open(build_report(root).with_suffix(".csv"), newline="") as handle:
        rows = {r["settings"]: r for r in csv.DictReader(handle) if r["evaluation"] == "standard"}
    assert set(rows) == {"", "optim.lr=0.5"}
    assert rows[""]["runs"] == "2" and float(rows[""]["test_mean"]) == pytest.approx(101.0)


def test_the_same_seed_twice_is_counted_once_and_flagged(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    for name, seed, test in (("a", 1, 100.0), ("b", 2, 110.0), ("c", 1, 104.0)):
        fake_run(root, name, variant="zaremba", seed=seed, val=test, test=test)
    report = build_report(root)
    with open(report.with_suffix(".csv"), newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["evaluation"] == "standard"]
    assert row["seeds"] == "1 2" and row["runs"] == "2" and row["duplicate_seeds"] == "1"
    assert float(row["test_mean"]) == pytest.approx(105.0)  # a and b: the first of seed 1
    assert "seed 1 twice" in report.read_text()


@pytest.mark.parametrize("count", [1, 2, 5])
def test_each_test_point_sits_on_its_label(tmp_path: Path, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnreg.reporting.render import draw_test_points

    rows = [
        {
            "variant": f"v{i}",
            "settings": "",
            "budget": "3 epochs",
            "evaluation": "standard",
            "test_mean": 100.0 + i,
            "test_std": 1.0,
            "paper_test": 99.0 if i % 2 else None,
        }
        for i in range(count)
    ]
    fig, ax = plt.subplots()
    draw_test_points(ax, rows)
    low, high = ax.get_xlim()
    ticks = list(ax.get_xticks())
    assert len(ticks) == count
    for line in ax.lines:
        for x in line.get_xdata():
            nearest = min(ticks, key=lambda t: abs(t - x))
            assert abs(nearest - x) <= 0.15
    for tick in ticks:
        assert low + 0.3 <= tick <= high - 0.3  # inside, away from both edges
    plt.close(fig)


def test_a_moved_comparison_still_finds_its_retrained_seeds(tmp_path: Path) -> None:
    """study.json names the retrained runs by the absolute paths they were trained at; a
    comparison copied elsewhere is read from its own folder, with its budget beside it."""
    from rnnreg.reporting.tuning import tuning_section

    root = tmp_path / "copied" / "cmp"
    study = {}
    for variant, tests in (("zaremba", (110.0, 111.0, 112.0)), ("gal", (120.0, 122.0, 121.0))):
        for seed, test in enumerate(tests, 1):
            fake_run(
                root / variant / "retrain",
                f"seed{seed}",
                variant=variant,
                seed=seed,
                val=test + 3,
                test=test,
            )
        study[variant] = {
            "trials": 4,
            "counted": 4,
            "states": {"complete": 2, "pruned": 2},
            "budget_epochs": 1,
            "pruner": "asha",
            "best_value": 130.0,
            "best_params": {"variant.p_input": 0.25},
            "retrain_seeds": 3,
            "retrain_dirs": [f"/gone/machine/cmp/{variant}/retrain/seed{s}" for s in (1, 2, 3)],
        }
    (root / "study.json").write_text(json.dumps(study))
    lines, _ = tuning_section(tmp_path / "copied", tmp_path / "figures", "zaremba")
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert "| 3 of 3, 3 epochs | 111.00 |" in rows["| zaremba"]
    assert "| 3 of 3, 3 epochs | 121.00 |" in rows["| gal"]
    assert "+10.00" in rows["| gal"]
