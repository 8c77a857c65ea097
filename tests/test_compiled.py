"""The loop path under torch.compile's default backend, inductor (the other tests trace
with the fast 'eager' backend). Kept out of make test's second, two-thread pass: each
case compiles C++ (on a GPU, Triton) kernels."""

from __future__ import annotations

import pytest
import torch
from test_lstm import VARIANTS, B, T, inputs, make_layer


@pytest.mark.slow  # inductor compiles C++ (or Triton) kernels: ~30 s on a CPU
@pytest.mark.parametrize("name", ["composed", "gal_untied_step", "moon_carried_on_output"])
def test_the_inductor_compiled_loop_equals_the_eager_loop(name: str, device: torch.device) -> None:
    """The default backend (inductor, not 'eager'): training (forward, hand-written
    backward) and evaluation in blocks of 3 over a window of 7 and a window of 2."""
    dropout = VARIANTS[name]
    compiled = make_layer(device, dtype=torch.float32, **dropout).train()
    eager = make_layer(device, dtype=torch.float32, **dropout).train()
    compiled.compile_loop(block=3)
    x, state = inputs(device, torch.float32)
    for steps in (T, 2):
        masks = compiled.draw_masks(steps, B, x.device, x.dtype)
        out = compiled(x[:steps], state, masks)[0]
        ref = eager(x[:steps], state, masks)[0]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(out)
        for layer, y in ((compiled, out), (eager, ref)):
            layer.zero_grad()
            (y * weights).sum().backward()
        for (pname, p), q in zip(compiled.named_parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=pname)
        with torch.no_grad():
            torch.testing.assert_close(
                compiled(x[:steps], state, masks)[0], ref, rtol=1e-5, atol=1e-5
            )
    assert compiled.loop_mode == "compiled" and compiled.compilations > 0
