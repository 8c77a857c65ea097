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


def machine_description(device: str = "cuda") -> str:
    """One line naming where a check ran: for ``cuda`` the GPU (name, memory, SMs), torch,
    CUDA and cuDNN, and the host's processor and CPU count; for ``cpu`` a rehearsal's
    processor and torch (scripts/gpu_check.sh writes it to machine.txt)."""
    host = f"{cpu_model()}, {os.cpu_count()} CPUs"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device is visible to torch")
        p = torch.cuda.get_device_properties(0)
        return (
            f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}; host {host}"
        )
    if device == "cpu":
        return f"rehearsal on the CPU: {host}, torch {torch.__version__}"
    raise ValueError(f"unknown device {device!r}: cuda or cpu")


def device_name(device: torch.device) -> str:
    """``cpu`` or the accelerator's name (``cuda: NVIDIA H100 ...``)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def machine_label(name: str, threads: int) -> str:
    """Where a stretch of training ran, as runs are compared (rnnreg/reporting/equal_time.py):
    the GPU's name, or the CPU's model, and the thread count."""
    return f"{name}, {threads} thread(s)"


def machines_text(machines: list[str]) -> str:
    """The machines of a run's processes in turn, as tables print them."""
    return " then ".join(machines)


def this_machine(device: torch.device) -> str:
    """:func:`machine_label` of this process: its GPU, or its CPU, and its thread count."""
    name = device_name(device) if device.type != "cpu" else cpu_model()
    return machine_label(name, torch.get_num_threads())


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


if __name__ == "__main__":  # python -m rnnreg.records.provenance [cuda|cpu]
    import sys

    print(machine_description(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
