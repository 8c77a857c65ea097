"""Fault-injection points for the tests that kill or poison a training process.

Inert unless the environment asks (the variables are read per call, so a test can set
them for one subprocess; no code path changes when they are unset):

- ``RNNREG_TEST_PAUSE=<point>:<n>`` — at the n-th time the process reaches ``point``
  (``step``, ``validation``, ``checkpoint``, ``test``), write ``RNNREG_TEST_MARKER`` and
  sleep, so that a test can SIGKILL the process exactly there;
- ``RNNREG_TEST_NAN=<seed>:<step>`` — the run with that seed gets a NaN loss at that
  optimizer step (1-based).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_reached: dict[str, int] = {}


def pause_point(point: str) -> None:
    """Pause here (for a test to kill the process) if ``RNNREG_TEST_PAUSE`` names it."""
    wanted = os.environ.get("RNNREG_TEST_PAUSE")
    if not wanted:
        return
    _reached[point] = _reached.get(point, 0) + 1
    name, _, count = wanted.partition(":")
    if name == point and _reached[point] == int(count or 1):
        marker = os.environ.get("RNNREG_TEST_MARKER")
        if marker:
            Path(marker).write_text(point)
        time.sleep(float(os.environ.get("RNNREG_TEST_PAUSE_S", "600")))


def inject_nan(seed: int, step: int) -> bool:
    """Whether ``RNNREG_TEST_NAN`` asks for a NaN loss at this run's ``step``."""
    wanted = os.environ.get("RNNREG_TEST_NAN")
    if not wanted:
        return False
    nan_seed, _, nan_step = wanted.partition(":")
    return int(nan_seed) == seed and int(nan_step) == step
