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
    config: dict | None = None,
) -> None:
    """A finished (or not) run's files; ``config``: its resolved config (a stub of 3
    epochs by default)."""
    config = config or {"trainer": {"epochs": 3, "max_steps": None}}
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
        "epochs_planned": config["trainer"]["epochs"],
        "steps": 10 * epochs,
        "stage": "train",
        "val_ppl_mc": None if mc is None else mc + 1,
        "test_ppl_mc": mc,
        "config": config,
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


def preset(*overrides: str) -> dict:
    """The resolved config of ``experiment=...`` and overrides, as a summary holds it."""
    from rnnreg.reporting.data import composed_config

    config = composed_config(tuple(overrides))
    assert config is not None
    return config


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """Zaremba small at its preset (3 seeds), gal with MC, zoneout, and runs left out."""
    root = tmp_path / "outputs"
    small = preset("experiment=zaremba_small")
    for seed, (val, test) in enumerate([(120.0, 115.0), (122.0, 116.0), (121.0, 114.0)], 1):
        fake_run(
            root / "multiruns" / "a",
            f"{seed}_none",
            variant="none",
            seed=seed,
            val=val,
            test=test,
            config=small,
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
        "| ptb | small | none | 13 epochs | standard (test_weights=final) | fp32 | 3 (1 2 3) "
        "| 121.00 ± 1.00",
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


def test_retrained_runs_of_different_configurations_are_never_averaged(
    tmp_path: Path, caplog
) -> None:
    """Two workers that retrained different 'best' configurations (the old race): the
    tuning table shows no mean for that variant, says why, and compares nothing with it."""
    from rnnreg.reporting.tuning import tuning_section

    root = tmp_path / "cmp"
    study = {}
    for variant, rates in (("zaremba", (0.2, 0.2, 0.2)), ("gal", (0.3, 0.5, 0.3))):
        for seed, rate in enumerate(rates, 2):
            config = {"trainer": {"epochs": 3, "max_steps": None}, "variant": {"p_input": rate}}
            fake_run(
                root / variant / "retrain",
                f"seed{seed}",
                variant=variant,
                seed=seed,
                val=113.0,
                test=110.0 + seed,
                config=config,
            )
        study[variant] = {
            "trials": 4,
            "counted": 4,
            "states": {"complete": 4},
            "budget_epochs": 1,
            "pruner": "none",
            "best_value": 130.0,
            "best_params": {"variant.p_input": rates[0]},
            "retrain_seeds": 3,
            "retrain_dirs": [str(root / variant / "retrain" / f"seed{s}") for s in (2, 3, 4)],
        }
    (root / "study.json").write_text(json.dumps(study))
    lines, _ = tuning_section(tmp_path, tmp_path / "figures", "zaremba")
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert "| 3 of 3, 3 epochs | 113.00 |" in rows["| zaremba"]
    assert "configurations differ, not averaged" in rows["| gal"]
    assert "113" not in rows["| gal"] and "+" not in rows["| gal"]
    assert any("hold different configurations" in r.getMessage() for r in caplog.records)


def mc_run(
    root: Path, name: str, seed: int, config: dict, test: float, mc: float, *overrides: str
) -> None:
    """A run of ``config`` (MC-evaluated), launched with ``overrides`` (.hydra)."""
    fake_run(
        root,
        name,
        variant=config["variant"]["name"],
        seed=seed,
        val=test + 2,
        test=test,
        mc=mc,
        config=config,
    )
    path = root / name / "summary.json"
    summary = json.loads(path.read_text())
    summary["model"] = config["model"]["name"]
    path.write_text(json.dumps(summary))
    if overrides:
        (root / name / ".hydra").mkdir()
        listed = "".join(f"- {o}\n" for o in overrides)
        (root / name / ".hydra" / "overrides.yaml").write_text(listed)


def test_the_paper_stands_beside_its_preset_and_both_k_where_only_k_differs(
    tmp_path: Path,
) -> None:
    """gal_medium with eval.mc_samples=100 (as make sweep-paper and the ledger run it): its
    standard sub-row sits beside Gal's 79.7, its MC sub-row beside 79.0 with both K; the
    training configuration is one group, not a changed one."""
    root = tmp_path / "outputs"
    launched = ("experiment=gal_medium", "eval.mc_samples=100")
    config = preset(*launched)
    for seed in (1, 2):
        mc_run(root, f"gal{seed}", seed, config, 80.0 + seed, 79.0 + seed, *launched)
    build_report(root)
    rows = read_report(root / "report" / "report.csv")
    standard, mc = rows[("gal_tied", "standard")], rows[("gal_tied", "mc")]
    assert standard["settings"] == "" and mc["settings"] == ""  # the preset, both sub-rows
    assert standard["paper"] == "Gal2016" and float(standard["paper_test"]) == 79.7
    assert standard["paper_preset"] == "gal_medium" and standard["paper_note"] == ""
    assert mc["evaluation_settings"] == "K=100"
    assert mc["paper"] == "Gal2016" and float(mc["paper_test"]) == 79.0
    assert mc["paper_note"] == "K=100 here, K=1000 in the paper"
    markdown = (root / "report" / "report.md").read_text()
    assert "| mc (K=100) |" in markdown and "; K=100 here, K=1000 in the paper |" in markdown


def test_a_run_that_is_not_the_preset_is_not_set_beside_the_paper_and_says_why(
    tmp_path: Path,
) -> None:
    """variant=zaremba model=medium for 3 steps composes nothing like zaremba_medium's 39
    epochs: no paper number (before: 'test − paper 5,971.80'), and the reason."""
    root = tmp_path / "outputs"
    config = preset("variant=zaremba", "model=medium", "trainer.max_steps=3")
    mc_run(root, "short", 1, config, test=6054.5, mc=6000.0)
    longer = preset("experiment=zaremba_medium", "trainer.epochs=13")
    mc_run(root, "longer", 1, longer, test=90.0, mc=89.0)
    build_report(root)
    with open(root / "report" / "report.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["evaluation"] == "standard"]
    for row in rows:
        assert row["paper"] == "" and row["paper_test"] == "" and row["test_minus_paper"] == ""
    notes = {row["budget"]: row["paper_note"] for row in rows}
    assert notes["13 epochs"] == "not the preset: trainer.epochs 13 ≠ 39"
    assert notes["3 steps"].startswith("not the preset: ") and "≠" in notes["3 steps"]
    markdown = (root / "report" / "report.md").read_text()
    assert "| *not the preset: trainer.epochs 13 ≠ 39* |" in markdown


def test_evaluation_settings_are_sub_rows_and_the_reference_is_found_by_variant(
    tmp_path: Path, caplog
) -> None:
    """A 2x2 sweep with eval.test_batch_size=20 on every run: groups named zaremba and gal
    (the evaluation setting is a sub-row's), compared against --reference zaremba; a run of
    the same training at test batch 1 is another sub-row of the same group."""
    root = tmp_path / "outputs"
    for variant, tests in (("zaremba", (100.0, 101.0)), ("gal", (95.0, 96.0))):
        config = preset(f"variant={variant}", "eval.test_batch_size=20")
        for seed, test in enumerate(tests, 1):
            fake_run(
                root,
                f"{variant}{seed}",
                variant=variant,
                seed=seed,
                val=test + 3,
                test=test,
                config=config,
            )
    fake_run(
        root,
        "zaremba_b1",
        variant="zaremba",
        seed=1,
        val=103.0,
        test=100.5,
        config=preset("variant=zaremba"),
    )
    build_report(root, reference="zaremba")
    with open(root / "report" / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {(r["variant"], r["settings"], r["evaluation_settings"]) for r in rows}
    assert names == {
        ("zaremba", "", "test_batch_size=20"),
        ("zaremba", "", ""),
        ("gal_tied", "", "test_batch_size=20"),
    }
    gal = next(r for r in rows if r["variant"] == "gal_tied")
    assert gal["reference"] == "zaremba" and float(gal["test_minus_reference"]) == -5.0
    markdown = (root / "report" / "report.md").read_text()
    assert "standard (test_batch_size=20) / fp32: against `zaremba`" in markdown
    caplog.clear()
    build_report(root, reference="moon")
    said = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(said) == 1 and "'moon' is in no setting" in said[0] and "zaremba" in said[0]


def test_a_mean_over_fewer_runs_than_the_row_says_how_many(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    for seed in (1, 2, 3):
        fake_run(root, f"z{seed}", variant="zaremba", seed=seed, val=100, test=96 + seed)
        if seed < 3:  # two of the three measured calibration
            path = root / f"z{seed}" / "summary.json"
            summary = json.loads(path.read_text()) | {"test_acc": 0.25, "test_ece": 0.01}
            path.write_text(json.dumps(summary))
    markdown = build_report(root).read_text()
    table = markdown.split("## Calibration and uncertainty (test)")[1]
    assert "| 0.2500 (2 of 3) |" in table and "| 0.0100 (2 of 3) |" in table


def test_a_one_epoch_curve_has_whole_epoch_ticks() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnnreg.reporting.render import epoch_axis

    fig, ax = plt.subplots()
    ax.plot([1], [120.0], "o")
    epoch_axis(ax, 1)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]
    plt.close(fig)


def test_trials_of_a_comparison_on_a_database_are_not_rows(tmp_path: Path) -> None:
    """During tuning on PostgreSQL there is no journal.log nor study.json yet: the tune.json
    written before the workers start marks the trials (no test split scored either)."""
    from rnnreg.reporting.data import find_runs

    root = tmp_path / "outputs"
    fake_run(
        root / "tune" / "cmp" / "zaremba", "trial_0000", variant="zaremba", seed=1, val=100, test=96
    )
    fake_run(root / "runs", "plain", variant="zaremba", seed=1, val=100, test=96)
    assert len(find_runs(root)) == 2
    (root / "tune" / "cmp" / "tune.json").write_text("{}")
    assert [run.path.name for run in find_runs(root)] == ["plain"]


def test_a_two_pass_objective_is_its_own_row_named_after_it(tmp_path: Path) -> None:
    """``variant=zaremba objective=fd`` is never averaged with plain zaremba."""
    plain = {"trainer": {"epochs": 3, "max_steps": None}}
    fraternal = {**plain, "objective": {"name": "fd", "kappa": 0.15}}
    for seed in (1, 2):
        fake_run(
            tmp_path, f"z{seed}", variant="zaremba", seed=seed, val=120.0, test=110.0, config=plain
        )
        fake_run(
            tmp_path,
            f"f{seed}",
            variant="zaremba",
            seed=seed,
            val=115.0,
            test=105.0,
            config=fraternal,
        )
    from rnnreg.reporting.data import find_runs, group_runs, summarise

    rows = {
        row["variant"]: row for row in (summarise(g, []) for g in group_runs(find_runs(tmp_path)))
    }
    assert set(rows) == {"zaremba", "zaremba+fd"}
    assert rows["zaremba+fd"]["test_mean"] == 105.0 and rows["zaremba"]["test_mean"] == 110.0


def test_gru_runs_are_their_own_row_named_after_the_cell(tmp_path: Path) -> None:
    """``variant=gal model.cell=gru`` is never averaged with the LSTM's gal."""
    lstm = {"trainer": {"epochs": 3, "max_steps": None}}
    gru = {**lstm, "model": {"cell": "gru"}}
    for seed in (1, 2):
        fake_run(tmp_path, f"l{seed}", variant="gal", seed=seed, val=99.0, test=95.0, config=lstm)
        fake_run(tmp_path, f"g{seed}", variant="gal", seed=seed, val=120.0, test=115.0, config=gru)
    from rnnreg.reporting.data import find_runs, group_runs, summarise

    rows = {
        row["variant"]: row for row in (summarise(g, []) for g in group_runs(find_runs(tmp_path)))
    }
    assert set(rows) == {"gal_tied", "gru:gal_tied"}
    assert rows["gru:gal_tied"]["test_mean"] == 115.0 and rows["gal_tied"]["test_mean"] == 95.0


def test_runs_inside_the_repository_are_shown_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tracked report (results/compare-small) names its runs as results/runs/<name>, the
    same from any checkout; a run outside the repository keeps its whole path."""
    from rnnreg.reporting import data

    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "repo")
    runs = tmp_path / "repo" / "results" / "runs"
    fake_run(runs, "compare_a_s1", variant="zaremba", seed=1, val=120.0, test=115.0)
    fake_run(runs, "compare_b_s1", variant="gal", seed=1, val=130.0, test=0.0, status="running")
    markdown = build_report(runs, tmp_path / "out")
    report = read_report(markdown.with_suffix(".csv"))
    assert report[("zaremba", "standard")]["best_run"] == "results/runs/compare_a_s1"
    assert "| `results/runs/compare_b_s1` |" in markdown.read_text()
    assert str(tmp_path) not in markdown.read_text()
    assert data.shown_path(tmp_path / "x") == str(tmp_path / "x")


def test_gru_rows_are_compared_with_the_gru_reference_and_holm_counts_per_cell(
    tmp_path: Path,
) -> None:
    """--reference zaremba: LSTM gal against zaremba, GRU gal against gru:zaremba (never
    against an LSTM), each cell its own Holm family, so the one tested comparison per cell
    keeps Welch's own p-value; without a GRU zaremba, GRU rows are compared with nothing."""
    import shutil

    from scipy import stats

    lstm = {"trainer": {"epochs": 3, "max_steps": None}}
    gru = {**lstm, "model": {"cell": "gru"}}
    tests = {
        ("zaremba", "l"): (110.0, 112.0),
        ("gal", "l"): (100.0, 103.0),
        ("zaremba", "g"): (150.0, 151.0),
        ("gal", "g"): (140.0, 144.0),
    }
    for (variant, cell), values in tests.items():
        for seed, test in enumerate(values, 1):
            fake_run(
                tmp_path / "outputs",
                f"{cell}{variant}{seed}",
                variant=variant,
                seed=seed,
                val=test + 2,
                test=test,
                config=gru if cell == "g" else lstm,
            )
    fake_run(tmp_path / "outputs", "gnone", variant="none", seed=1, val=190, test=180, config=gru)
    markdown = build_report(tmp_path / "outputs", tmp_path / "out", reference="zaremba")
    rows = read_report(markdown.with_suffix(".csv"))
    gal, gru_gal = rows[("gal_tied", "standard")], rows[("gru:gal_tied", "standard")]
    assert gal["reference"] == "zaremba" and float(gal["test_minus_reference"]) == -9.5
    assert gru_gal["reference"] == "gru:zaremba" and gru_gal["settings"] == ""
    assert float(gru_gal["test_minus_reference"]) == -8.5
    for row, (variant, cell) in ((gal, ("gal", "l")), (gru_gal, ("gal", "g"))):
        p = stats.ttest_ind(tests[(variant, cell)], tests[("zaremba", cell)], equal_var=False)
        assert float(row["p_holm"]) == pytest.approx(p.pvalue, rel=1e-6)
    assert rows[("gru:none", "standard")]["reference"] == "gru:zaremba"
    assert "fp32: against `zaremba` and `gru:zaremba`" in markdown.read_text()
    for seed in (1, 2):
        shutil.rmtree(tmp_path / "outputs" / f"gzaremba{seed}")
    rows = read_report(
        build_report(tmp_path / "outputs", tmp_path / "out", "zaremba").with_suffix(".csv")
    )
    assert rows[("gru:gal_tied", "standard")]["reference"] == ""
    assert rows[("gal_tied", "standard")]["reference"] == "zaremba"
