"""Bad input gets one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses: left out by make test-fast

TINY = [
    "model.embedding_size=8",
    "model.hidden_size=8",
    "trainer.batch_size=4",
    "trainer.bptt=8",
    "eval.batch_size=4",
    "trainer.threads=1",
    "trainer.device=cpu",
]


def run_cli(python: str, tmp_path: Path, *args: str, data_dir: Path | None = None):
    env = dict(os.environ, RNNREG_CACHE_DIR=str(tmp_path / "cache"), HF_DATASETS_OFFLINE="1")
    env["RNNREG_DATA_DIR"] = str(data_dir if data_dir is not None else tmp_path / "nowhere")
    return subprocess.run(
        [python, "-m", "rnnreg.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rnnreg: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("variant=gall", ("unknown variant 'gall'", "zaremba", "none")),
        ("model=huge", ("unknown model 'huge'", "small", "medium", "large")),
        ("dataset=ptb2", ("unknown dataset 'ptb2'", "ptb", "wikitext2")),
        ("experiment=zaremba_tiny", ("unknown experiment", "zaremba_small")),
        ("variant.p_input=1.0", ("variant.p_input=1.0", "[0, 1)")),
        ("variant.p_output=-0.2", ("variant.p_output=-0.2",)),
        ("trainer.epocs=3", ("epocs", "TrainerConfig")),
        ("variant.activation_granularity=stap", ("stap", "step, sequence, batch")),
    ],
)
def test_bad_config_is_one_line(python, tmp_path: Path, override: str, fragments) -> None:
    assert_one_error_line(run_cli(python, tmp_path, override), *fragments)


def test_unknown_variant_in_a_sweep_is_one_line(python, tmp_path: Path) -> None:
    result = run_cli(python, tmp_path, "-m", "variant=zaremba,gall")
    assert_one_error_line(result, "unknown variant 'gall'")


def test_missing_data_files_name_the_expected_paths(python, tmp_path: Path) -> None:
    result = run_cli(python, tmp_path, *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_error_line(result, str(tmp_path / "nowhere" / "ptb"), "ptb.train.txt")


def test_unreadable_checkpoint_is_one_line(python, tmp_path: Path, tiny_data: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"\x00garbage, not a checkpoint")
    result = run_cli(
        python,
        tmp_path,
        *TINY,
        "trainer.resume=true",
        f"hydra.run.dir={run_dir}",
        data_dir=tiny_data,
    )
    assert_one_error_line(result, "unreadable", str(run_dir / "checkpoints" / "last.pt"))


def test_resume_without_checkpoint_is_one_line(python, tmp_path: Path, tiny_data: Path) -> None:
    result = run_cli(
        python,
        tmp_path,
        *TINY,
        "trainer.resume=true",
        f"hydra.run.dir={tmp_path / 'empty'}",
        data_dir=tiny_data,
    )
    assert_one_error_line(result, "has no checkpoint", "hydra.run.dir")


def test_the_rnnreg_console_script_dispatches_to_every_entry_point(tmp_path: Path, capsys):
    from rnnreg.cli.main import main

    assert main(["--help"]) == 0 and "rnnreg train" in capsys.readouterr().out
    assert main(["report", "--outputs", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnreg: error:") and "missing" in err[0]
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_the_installed_console_script_runs(python: str) -> None:
    script = Path(python).with_name("rnnreg")
    if not script.exists():
        pytest.skip("rnnreg is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "rnnreg report" in result.stdout
