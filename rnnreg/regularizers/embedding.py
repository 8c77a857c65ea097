"""Embedding (word-type) dropout: drop whole rows of the embedding matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnreg.regularizers.masks import draw_mask


def embed_with_type_dropout(
    embedding: nn.Embedding,
    tokens: torch.Tensor,
    p: float,
    *,
    training: bool,
    replicas: int = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``e_t = (E ∘ z)[w_t]`` with one mask ``z`` over the vocabulary per forward pass.

    ``z_v`` is 0 with probability ``p``, else ``1/(1-p)``, so every occurrence of a dropped
    word in the batch is zeroed (Gal & Ghahramani 2016; AWD-LSTM's ``embedded_dropout``).
    Computed as ``E[w_t] · z[w_t]``, which equals indexing the masked matrix and avoids
    materialising a V x E copy. ``mask`` (shape (V,)) replaces the draw, for tests.
    With ``replicas`` R > 1 (MC dropout) the columns of ``tokens`` (T, B) hold R
    independent copies, replica-major, and each copy gets its own ``z``.
    """
    embedded = F.embedding(tokens, embedding.weight)
    if not training or (p == 0.0 and mask is None):
        return embedded
    if mask is None and replicas > 1:
        masks = draw_mask(
            (replicas, embedding.num_embeddings), p, device=embedded.device, dtype=embedded.dtype
        )
        columns = tokens.size(1)
        replica = torch.arange(columns, device=tokens.device) // (columns // replicas)
        return embedded * masks[replica.expand_as(tokens), tokens].unsqueeze(-1)
    if mask is None:
        mask = draw_mask(
            (embedding.num_embeddings,), p, device=embedded.device, dtype=embedded.dtype
        )
    return embedded * mask[tokens].unsqueeze(-1)
