"""The clock that leaves out the time a process was stopped (rnnreg/core/process.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rnnreg.core.process import RunClock

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX signals")

CHILD = """
import sys, time
from rnnreg.core.process import RunClock
clock = RunClock()
with clock.running():
    wall, start = time.monotonic(), clock.now()
    print("ready", flush=True)
    while clock.now() - start < 4.0:  # 4 s of running time
        sum(range(10_000))  # work, in bytecode, as a training loop does between operators
    print(clock.stopped_s, time.monotonic() - wall, clock.now() - start, flush=True)
"""


def test_a_stopped_and_continued_process_leaves_the_stop_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    child.send_signal(signal.SIGSTOP)
    time.sleep(2.0)
    child.send_signal(signal.SIGCONT)
    stopped, wall, counted = map(float, child.stdout.readline().split())
    assert child.wait(timeout=30) == 0
    assert 1.5 < stopped < 2.6  # the 2 s stop, within a beat and the handler's delay
    assert wall > 5.5 and counted == pytest.approx(wall - stopped, abs=0.05)


def test_a_gap_without_sigcont_and_a_sigcont_without_a_gap_count_nothing() -> None:
    clock = RunClock()
    with clock.running():
        with clock._lock:
            clock._last -= 5.0  # the notes stalled for 5 s (a call that held the interpreter)
        time.sleep(0.5)
        assert clock.stopped_s == 0.0 and clock._gap[0] > 4.0  # seen, not confirmed
        clock._gap = (0.0, -float("inf"))
        os.kill(os.getpid(), signal.SIGCONT)  # the process was never stopped
        time.sleep(0.2)
    assert clock.stopped_s == 0.0
    assert signal.getsignal(signal.SIGCONT) is not clock._continued  # the handler is restored
