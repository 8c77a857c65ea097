"""A training process among others: stop signals (SIGINT, SIGTERM, SLURM's SIGUSR2) honoured at
a step boundary, and one process per run directory."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]
from rnnreg import RunInUse

log = logging.getLogger(__name__)

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
