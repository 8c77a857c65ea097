"""The worked example's flow from its README, with the example installed as its own package
(examples/my_regularizer): verify, a 3-seed sweep against zaremba and gal, the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rnnreg import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "my_regularizer"
TINY = [
    "model.embedding_size=8",
    "model.hidden_size=8",
    "model.compile=false",
    "trainer.batch_size=4",
    "trainer.bptt=6",
    "eval.batch_size=4",
    "eval.bptt=6",
    "trainer.epochs=1",
    "trainer.max_steps=6",
    "trainer.threads=1",
    "trainer.progress=log",
]


def _run(*command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, (command, done.stdout[-1500:], done.stderr[-1500:])
    return done.stdout


@pytest.fixture(scope="module")
def installed():
    """``pip install -e examples/my_regularizer`` (no index: the build backend is here),
    uninstalled afterwards so no other test sees the plug-in."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(*pip, "install", "--no-build-isolation", "--no-deps", "-e", str(EXAMPLE))
    yield
    _run(*pip, "uninstall", "-y", "rnnreg-my-regularizer")


@pytest.mark.slow
def test_the_readme_flow_runs_with_the_example_installed(
    installed, tmp_path: Path, tiny_data: Path
) -> None:
    import os

    env = dict(
        os.environ,
        RNNREG_DATA_DIR=str(tiny_data),
        RNNREG_CACHE_DIR=str(tmp_path / "c"),
        RNNREG_OUTPUTS=str(tmp_path / "out"),
    )
    verified = _run(sys.executable, "-m", "rnnreg.verify", "variant=variational_zoneout", env=env)
    assert "all checks passed" in verified and "| resume | pass |" in verified
    assert "none: this rule runs on the generic path only" in verified
    gru = ("variant=variational_zoneout", "model.cell=gru", "variant.zoneout_seq_cell=0")
    on_gru = _run(sys.executable, "-m", "rnnreg.verify", *gru, "--no-resume", env=env)
    assert "all checks passed" in on_gru and "| evaluation h_t | pass |" in on_gru

    sweep = tmp_path / "out" / "multiruns" / "my-rule"
    _run(
        sys.executable,
        "-m",
        "rnnreg.train",
        "-m",
        "variant=variational_zoneout,zaremba,gal",
        "seed=1,2,3",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        env=env,
    )
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 9
    assert sum('"lstm_path": "generic"' in s.read_text() for s in summaries) == 3

    _run(sys.executable, "-m", "rnnreg.report", "--reference", "zaremba", env=env)
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    table = report.split("\n## ")[0]  # the perplexity table, before the sections
    rows = [line for line in table.splitlines() if line.startswith("|")]
    for variant, path in (
        ("variational_zoneout", "generic"),
        ("zaremba", "fused"),
        ("gal_tied", "loop"),
    ):
        mine = [row for row in rows if f"| {variant} (" in row]
        assert len(mine) == 1 and "| 3 (1 2 3) |" in mine[0] and f"| {path} |" in mine[0], report
    assert "variational_zoneout (" in report.split("against `zaremba")[1]  # compared, with p
    assert "## Equal time" in report  # tokens/s and wall time beside the perplexity
