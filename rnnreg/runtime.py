"""Process-level concerns of a run: the device, seeds and RNG state, stop signals."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

import torch

from rnnreg import PROJECT_ROOT, RnnregError, RunInUse
from rnnreg.config import Device

log = logging.getLogger(__name__)


def select_device(requested: Device) -> torch.device:
    """``auto``: CUDA when visible, else the CPU; ``cuda`` without a GPU is an error."""
    if requested is Device.cuda and not torch.cuda.is_available():
        raise RnnregError(
            "trainer.device=cuda but no CUDA device is visible; use trainer.device=auto"
        )
    if requested is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested.value)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (all devices) for a reproducible run."""
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every generator's state, for a checkpoint (resume continues the same draws): the CPU
    generator and Python's always, each CUDA device's when CUDA is up, and the type of the
    device the run draws its masks on (``device``)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "device": device.type,
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> bool:
    """Restore :func:`rng_state`'s generators on this machine, per device: the CPU one and
    Python's always, the CUDA ones when the checkpoint has them and as many GPUs are
    visible. Every state is handed over as the CPU ByteTensor torch takes, wherever the
    checkpoint was loaded. Returns whether the random streams continue exactly: False
    when the masks were drawn on another device type (or other GPUs) than now."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    same = state.get("device", "cpu") == device.type
    saved_cuda = state.get("cuda")
    if device.type == "cuda":
        same = same and saved_cuda is not None and len(saved_cuda) == torch.cuda.device_count()
        if same:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved_cuda])
    elif saved_cuda is not None and torch.cuda.is_available():
        if len(saved_cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved_cuda])
    return same


#: SIGUSR2 is what SLURM sends ahead of a time-out or preemption (submitit's default).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name)
)


class StopRequest:
    """Set by SIGINT/SIGTERM/SIGUSR2: the loop stops at the next step boundary and
    checkpoints; then :meth:`forward` hands the signal to whoever listened before us
    (submitit's handler requeues a preempted SLURM job, which then resumes)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def handler(signum: int, frame: object) -> None:
            if self.signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.signal = signum
            log.warning(
                "%s received: stopping at the end of this step", signal.Signals(signum).name
            )

        for sig in self.previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in self.previous.items():
                signal.signal(sig, old)

    def forward(self) -> None:
        """Call the handler that was installed before ours for the signal received."""
        previous = self.previous.get(self.signal) if self.signal is not None else None
        if callable(previous):
            previous(self.signal, None)


@contextmanager
def exclusive_run(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while training it.

    A second process on the same directory (a sweep launched again while its jobs still
    run) gets :class:`RunInUse` instead of writing the same checkpoint and logs. The lock
    is ``flock``'s: the kernel drops it when its holder exits, however it exits, so a
    crashed run never leaves a stale lock behind.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise RunInUse(
                    f"{run_dir} is being trained by another process (pid {holder}); wait for "
                    "it to end or stop it, then launch again"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


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
