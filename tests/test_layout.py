"""The house's rules, checked: lower rooms never import higher ones, and the schema
(config, the entry point) does not import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rnnreg"

#: Packages from the bottom up, in the way the data goes (docs/architecture.md); a module
#: may import its own package or the ones below. ``rnnreg`` itself holds the errors, and
#: its top-level modules are the ``python -m rnnreg.<name>`` entry points.
PACKAGES = [
    "core",
    "config",
    "data",
    "model",
    "evaluation",
    "records",
    "training",
    "tuning",
    "verification",
    "reporting",
    "cli",
]


def room_of(module: str) -> int:
    parts = module.split(".")
    if module == "rnnreg":
        return 0
    if len(parts) == 2:  # rnnreg.train, rnnreg.report, ...: the entry points, on top
        return len(PACKAGES) + 1
    if parts[1] not in PACKAGES:
        raise AssertionError(f"{module} is in no package of tests/test_layout.py: place it")
    return PACKAGES.index(parts[1]) + 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The rnnreg modules ``path`` imports (``from rnnreg.x.y import z`` counts as rnnreg.x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnreg"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("rnnreg")}
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_imports_a_higher_room(path: Path) -> None:
    own = room_of(module_name(path))
    higher = sorted(m for m in imported(path) if room_of(m) > own)
    assert not higher, f"{module_name(path)} imports {higher} from a higher room"


def test_the_schema_and_the_entry_point_do_not_import_torch() -> None:
    code = "import sys, rnnreg.config.schema, rnnreg.train; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
