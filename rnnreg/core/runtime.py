"""Process-level concerns of a run: the device, seeds and RNG state, stop signals."""

from __future__ import annotations

import logging
import random
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]
import torch

from rnnreg import RnnregError

log = logging.getLogger(__name__)


def select_device(requested: str) -> torch.device:
    """``auto``: CUDA when visible, else the CPU; ``cuda`` without a GPU is an error.
    ``requested`` is ``trainer.device`` (``rnnreg.config.schema.Device``, a str enum)."""
    name = str(getattr(requested, "value", requested))
    if name == "cuda" and not torch.cuda.is_available():
        raise RnnregError(
            "trainer.device=cuda but no CUDA device is visible; use trainer.device=auto"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim ``value`` of ``like``'s dtype and device, made once per process: a constant
    operand that costs a step no operator (a backward seed, a clip's offset)."""
    key = (value, like.dtype, like.device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.full((), value, dtype=like.dtype, device=like.device)
    return _CONSTANTS[key]
