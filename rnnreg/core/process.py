"""A training process among others: stop signals (SIGINT, SIGTERM, SLURM's SIGUSR2) honoured at
a step boundary, one process per run directory, and a clock that leaves out the time the
process was stopped (SIGSTOP, a suspended SLURM job)."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
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


class RunClock:
    """Seconds that leave out the time this process was stopped (SIGSTOP or SIGTSTP, then
    SIGCONT: a run paused for a benchmark, a suspended SLURM job), so that training time,
    tokens/s and the equal-time view count only time the process could run:

        now() = monotonic() − Σ stops

    A daemon thread notes the time every ``beat`` seconds, so a stop shows as a gap
    between two notes. A gap counts only when SIGCONT's handler confirms it within
    ``confirm_s``: a long call that holds the interpreter is never taken for a stop. Outside
    the main thread (no handler can be installed) it is the monotonic clock."""

    def __init__(self, beat: float = 0.1, threshold: float = 1.0, confirm_s: float = 30.0):
        self.beat, self.threshold, self.confirm_s = beat, threshold, confirm_s
        self.stopped_s = 0.0  # the stops counted so far
        self._last = time.monotonic()  # the last note
        self._gap = (0.0, -math.inf)  # the last long gap: (seconds stopped, when it ended)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._previous: Any = None

    def now(self) -> float:
        return time.monotonic() - self.stopped_s

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count stops while inside (the main thread only)."""
        sigcont = getattr(signal, "SIGCONT", None)
        if sigcont is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._last, self._done = time.monotonic(), threading.Event()
        self._previous = signal.signal(sigcont, self._continued)
        signal.siginterrupt(sigcont, False)  # system calls go on (SA_RESTART): C code sees no EINTR
        beats = threading.Thread(target=self._note, name="rnnreg-clock", daemon=True)
        beats.start()
        try:
            yield
        finally:
            self._done.set()
            signal.signal(sigcont, self._previous)
            beats.join()

    def _note(self) -> None:
        while not self._done.wait(self.beat):
            with self._lock:
                t = time.monotonic()
                if t - self._last > self.threshold:
                    self._gap = (t - self._last - self.beat, t)
                self._last = t

    def _continued(self, signum: int, frame: object) -> None:
        """SIGCONT's handler: count the stop that just ended, seen by the notes or not yet."""
        with self._lock:
            t = time.monotonic()
            seconds, ended = self._gap
            if t - self._last > self.threshold:  # no note since the process went on
                seconds = t - self._last - self.beat
            elif t - ended > self.confirm_s:  # SIGCONT to a process that was not stopped
                seconds = 0.0
            self._gap, self._last = (0.0, -math.inf), t
            self.stopped_s += max(seconds, 0.0)
        if seconds > 0:
            log.info("stopped for %.0f s (then SIGCONT): not counted as training time", seconds)
        if callable(self._previous):
            self._previous(signum, frame)


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
