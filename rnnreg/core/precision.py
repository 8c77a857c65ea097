"""The arithmetic of a run, one setting for both LSTM paths (``trainer.precision``).

PyTorch's own defaults differ between the two paths on a GPU: cuDNN's RNN (the fused
``nn.LSTM``) may use TF32 (``torch.backends.cudnn.rnn.fp32_precision`` is ``tf32``) while
plain matrix products (the loop path's ``addmm``) stay IEEE fp32. So every flag is set:

* ``fp32``: IEEE fp32 for cuBLAS products, cuDNN (conv, rnn) and oneDNN on the CPU: the
  papers' arithmetic.
* ``tf32``: TF32 for cuBLAS products and cuDNN on GPUs that have it (Ampere and newer);
  the CPU has no TF32, so oneDNN stays IEEE there.
* ``bf16``: the fp32 flags, plus ``torch.autocast(dtype=torch.bfloat16)`` around every
  forward pass (:func:`autocast`): matrix products (fused cuDNN/oneDNN LSTM, the loop's
  ``addmm``/``bmm``, the decoder) in bfloat16 on both paths; element-wise state, the loss
  and the hand-written backward's accumulations stay fp32 (``rnnreg/model/recurrence.py``).

``precision`` is ``trainer.precision`` (``rnnreg.config.schema.Precision``, a str enum).
The flags are process-wide; :func:`apply_precision` sets them all for the run and returns
what they now say, for ``summary.json``.
"""

from __future__ import annotations

import torch

#: The backends' fp32_precision flags (torch.backends.<backend>[.<op>].fp32_precision).
FLAGS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def _flag(name: str) -> object:
    module: object = torch.backends
    for part in name.split("."):
        module = getattr(module, part)
    return module


def backend_precision() -> dict[str, str]:
    """What each backend's fp32 arithmetic is set to now (``ieee``, ``tf32``, ...)."""
    return {name: str(_flag(name).fp32_precision) for name in FLAGS}  # type: ignore[attr-defined]


def apply_precision(precision: str) -> dict[str, str]:
    """Set every backend flag for ``precision`` (module docstring); return them."""
    gpu = "tf32" if precision == "tf32" else "ieee"
    for name in FLAGS:
        _flag(name).fp32_precision = gpu if name.startswith("cu") else "ieee"  # type: ignore[attr-defined]
    return backend_precision()


def autocast(precision: str, device_type: str) -> torch.autocast:
    """The forward pass's context: autocast to bfloat16 under ``bf16``, else a no-op."""
    enabled = precision == "bf16"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)
