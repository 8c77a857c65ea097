"""Where a number was measured: the processor, the device, the code's commit."""

from __future__ import annotations

import os
import subprocess

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]
import torch

from rnnreg import PROJECT_ROOT


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or the platform's guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """``cpu`` or the accelerator's name (``cuda: NVIDIA H100 ...``)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


#: Names the commit of a copy of the code that has no ``.git`` (a tree shipped to a cluster
#: node or a GPU machine); read only when ``git`` cannot answer.
GIT_COMMIT_ENV = "RNNREG_GIT_COMMIT"


def git_commit() -> str | None:
    """The project's commit (``+dirty`` when the work tree has changes); without a git
    checkout, ``$RNNREG_GIT_COMMIT`` marked ``(copy)``, or None."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        declared = os.environ.get(GIT_COMMIT_ENV, "").strip()
        return f"{declared} (copy)" if declared else None
    return f"{commit}+dirty" if dirty else commit
