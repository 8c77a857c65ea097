"""The house's rules, checked: lower rooms never import higher ones, and the schema
(config, the entry point) does not import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rnnreg"

#: Rooms from the bottom up; a module may import only its own room or the ones below.
ROOMS = [
    {"rnnreg", "rnnreg.dropout_settings", "rnnreg.files", "rnnreg.testhooks"}
    | {"rnnreg.significance"},
    {"rnnreg.config"},
    {"rnnreg.runtime", "rnnreg.data", "rnnreg.recurrence", "rnnreg.precision"},
    {f"rnnreg.regularizers{suffix}" for suffix in ("", ".masks", ".dropout", ".embedding")}
    | {f"rnnreg.regularizers.{name}" for name in ("weights", "activations", "layer_masks")},
    {"rnnreg.lstm"},
    {"rnnreg.model"},
    {"rnnreg.loss", "rnnreg.evaluate", "rnnreg.optim"}
    | {"rnnreg.cache_pointer", "rnnreg.dynamic_eval"},
    {"rnnreg.final_eval"},
    {"rnnreg.records"},
    {"rnnreg.run_state", "rnnreg.resume"},
    {"rnnreg.trainer"},
    {"rnnreg.report_data", "rnnreg.report_render"},
    {"rnnreg.train", "rnnreg.ledger", "rnnreg.ledger_curves", "rnnreg.report", "rnnreg.rescore"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The rnnreg modules ``path`` imports (``from rnnreg.x import y`` counts as rnnreg.x,
    or rnnreg.x.y when that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnreg"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = any(candidate in room for room in ROOMS)
                names.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("rnnreg")}
    return names


def room_of(module: str) -> int:
    for index, room in enumerate(ROOMS):
        if module in room:
            return index
    raise AssertionError(f"{module} is in no room of tests/test_layout.py: place it")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_imports_a_higher_room(path: Path) -> None:
    own = room_of(module_name(path))
    higher = sorted(m for m in imported(path) if room_of(m) > own)
    assert not higher, f"{module_name(path)} imports {higher} from a higher room"


def test_the_schema_and_the_entry_point_do_not_import_torch() -> None:
    code = "import sys, rnnreg.config, rnnreg.train; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
