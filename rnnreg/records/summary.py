"""``summary.json``, written atomically (a reader never sees half of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnreg.core.files import atomic_write_bytes


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
