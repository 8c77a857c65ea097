"""The ``.hydra/`` record of a launch the run accepted: its overrides, its composed config, one
line per start or resume in ``launches.log``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rnnreg.core.files import atomic_write_bytes


@dataclass(frozen=True)
class LaunchRecord:
    """What a launch was asked to run: its command-line overrides and composed config.

    Written to ``<run_dir>/.hydra/`` (Hydra's layout: ``overrides.yaml``, ``config.yaml``)
    only once the run has accepted the launch — the directory is locked and the resume
    check passed — so a refused launch leaves the record of the run it was refused from
    as it was. ``launches.log`` keeps one line per accepted launch.
    """

    overrides: tuple[str, ...]
    config_yaml: str

    def write(self, run_dir: Path, resumed: bool) -> None:
        folder = run_dir / ".hydra"
        listed = "".join(f"- {override}\n" for override in self.overrides) or "[]\n"
        atomic_write_bytes(folder / "overrides.yaml", listed.encode())
        atomic_write_bytes(folder / "config.yaml", self.config_yaml.encode())
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{when} {'resume' if resumed else 'start'} {' '.join(self.overrides)}\n"
        with open(folder / "launches.log", "a") as handle:
            handle.write(line)
