"""Embedding (word-type) dropout: drop every occurrence of a word type.

Two granularities (``variant.embedding_granularity``):

* ``batch`` — AWD-LSTM's ``embedded_dropout``: one mask ``z`` over the vocabulary per
  forward pass, ``e_t = (E ∘ z)[w_t]``, shared by every row of the batch;
* ``sequence`` — Gal & Ghahramani's Lua code (``sample_noise`` in
  ``main_new_dropout_SOTA_v3_fix.lua``): a mask per batch row and BPTT window, tied over
  the repeated words of that row, ``e_{t,b} = z_b[w_{t,b}] E[w_{t,b}]`` with z_b over the
  vocabulary (the Lua code draws a (B, 1) mask per step and copies it to later
  occurrences of the same word in the row);
* ``step`` — every token on its own, untied (the Lua code before its tying loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnreg.model.regularizers.masks import Granularity, HeldMasks, draw_mask, held_or_drawn


def embed_with_type_dropout(
    embedding: nn.Embedding,
    tokens: torch.Tensor,
    p: float,
    *,
    training: bool,
    granularity: Granularity | str = Granularity.batch,
    replicas: int = 1,
    mask: torch.Tensor | None = None,
    held: HeldMasks | None = None,
) -> torch.Tensor:
    """``e_{t,b} = E[w_{t,b}] · z[w_{t,b}]`` with ``z`` 0 w.p. ``p``, else ``1/(1-p)``.

    The mask is over word types: every occurrence of a dropped word in its scope (the
    batch, or one row of the window, per ``granularity``) is zeroed. Computed by
    gathering ``z`` at the tokens, which equals indexing the masked matrix without
    materialising a V x E copy. ``mask`` replaces the draw, for tests: shape (V,) for
    ``batch``, (B, V) for ``sequence``, (T, B) for ``step``. With ``replicas`` R > 1 (MC
    dropout) the columns of ``tokens`` (T, B) hold R independent copies, replica-major,
    and a ``batch`` mask is drawn once per copy. ``held`` keeps a time-constant mask for
    later windows (MC dropout with one draw per pass).
    """
    embedded = F.embedding(tokens, embedding.weight)
    if not training or (p == 0.0 and mask is None):
        return embedded
    granularity = Granularity(granularity)
    steps, columns = tokens.shape
    vocab = embedding.num_embeddings

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return draw_mask(shape, p, device=embedded.device, dtype=embedded.dtype)

    if granularity is Granularity.step:
        z = mask if mask is not None else draw((steps, columns))
    elif granularity is Granularity.sequence:
        rows = (
            mask
            if mask is not None
            else held_or_drawn(held, "embedding", granularity, lambda: draw((columns, vocab)))
        )
        assert rows is not None
        z = rows[_columns(columns, tokens.device), tokens]
    else:
        types = (
            mask
            if mask is not None
            else held_or_drawn(held, "embedding", granularity, lambda: draw((replicas, vocab)))
        )
        assert types is not None
        if types.dim() == 1:
            types = types.unsqueeze(0)
        replica = torch.arange(columns, device=tokens.device) // (columns // types.size(0))
        z = types[replica.expand_as(tokens), tokens]
    return embedded * z.unsqueeze(-1)


_COLUMNS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _columns(count: int, device: torch.device) -> torch.Tensor:
    """0, 1, …, count − 1 on ``device``, made once per (count, device) and read only: the
    row of each token's mask, without an operator per step."""
    key = (count, device)
    if key not in _COLUMNS:
        _COLUMNS[key] = torch.arange(count, device=device)
    return _COLUMNS[key]
