"""Run Python as on a bare GPU machine: the standard library, and a site folder that holds
only torch, pytest and what ``make gpu-pack`` carries (scripts/gpu_pack.txt), with their
dependencies; nothing else of this environment can be imported.

    python scripts/bare_site.py -m pytest -m gpu --collect-only -q tests
    python scripts/bare_site.py --list                 # the distributions in the folder

The folder is made of links into this environment's site-packages, and Python runs with
``-S`` (no site-packages) and ``PYTHONPATH=<folder>:<repo>``: a venv of ``torch==2.13.0``
and the pack, without a download (tests/test_gpu_check.py collects the gpu tests so).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "scripts" / "gpu_pack.txt"
#: What a GPU image brings beside the pack: PyTorch and a test runner.
BASE = ("torch", "pytest")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packed() -> list[str]:
    """The distributions of scripts/gpu_pack.txt."""
    rows = [line.split() for line in PACK.read_text().splitlines()]
    return [row[0].split("==")[0] for row in rows if row and not row[0].startswith("#")]


def requirements(name: str) -> list[str]:
    """The distributions ``name`` requires on this Python, extras left out."""
    from packaging.markers import Marker

    found = []
    for spec in importlib.metadata.requires(name) or []:
        requirement, _, marker = spec.partition(";")
        if marker.strip() and ("extra" in marker or not Marker(marker.strip()).evaluate()):
            continue
        found.append(re.split(r"[\s<>=!~\[(]", requirement.strip(), maxsplit=1)[0])
    return found


def closure(names: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """``names`` and every distribution they require, transitively, as installed here."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if canonical(name) in found:
            continue
        try:
            found[canonical(name)] = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here, so not importable there either
        todo += requirements(name)
    return found


def build_site(folder: Path) -> list[str]:
    """Link every top-level file and folder of the allowed distributions into ``folder``
    (their .dist-info too, for importlib.metadata); the distributions linked."""
    distributions = closure([*BASE, *packed()])
    for dist in distributions.values():
        tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}
        for top in tops - {"__pycache__"}:
            source, link = Path(str(dist.locate_file(top))), folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return sorted(distributions)


def main() -> int:
    args = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="rnnreg-bare-site-") as tmp:
        linked = build_site(Path(tmp))
        if args == ["--list"]:
            print(" ".join(linked))
            return 0
        env = dict(os.environ, PYTHONPATH=f"{tmp}{os.pathsep}{REPO}")
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # plugins of this environment's packages
        return subprocess.call([sys.executable, "-S", *args], env=env, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
