"""The language model wiring: embedding -> LSTM layers -> decoder, with the masks between.

    e_t      = E[w_t]
    x^1_t    = e_t ∘ z_input                      (p_input)
    h^l_t    = LSTM_l(x^l_t, h^l_{t-1}, c^l_{t-1})
    x^{l+1}_t = h^l_t ∘ z_between                 (p_between)
    y_t      = D (h^L_t ∘ z_output) + b_D         (p_output)

Each layer is its own single-layer LSTM so regularizers can sit between layers.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnreg.config import ModelConfig, VariantConfig
from rnnreg.regularizers import ActivationDropout

State = list[tuple[torch.Tensor, torch.Tensor]]


class LanguageModel(nn.Module):
    """An LSTM language model whose regularization is given by a :class:`VariantConfig`."""

    def __init__(self, vocab_size: int, model: ModelConfig, variant: VariantConfig) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = model.hidden_size
        self.embedding = nn.Embedding(vocab_size, model.embedding_size)
        input_sizes = [model.embedding_size] + [model.hidden_size] * (model.num_layers - 1)
        self.layers = nn.ModuleList(nn.LSTM(size, model.hidden_size) for size in input_sizes)
        granularity = variant.activation_granularity
        self.input_dropout = ActivationDropout(variant.p_input, granularity, variant.scale)
        self.between_dropout = ActivationDropout(variant.p_between, granularity, variant.scale)
        self.output_dropout = ActivationDropout(variant.p_output, granularity, variant.scale)
        self.decoder = nn.Linear(model.hidden_size, vocab_size)
        if model.tie_weights:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters(model.init_range)

    def reset_parameters(self, init_range: float) -> None:
        """Every parameter, biases included, from U(-init_range, init_range), as in the papers."""
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-init_range, init_range)

    def init_state(self, batch_size: int) -> State:
        """Zero (h, c) for every layer, each of shape (1, B, H)."""
        weight = self.decoder.weight
        return [
            (
                weight.new_zeros(1, batch_size, layer.hidden_size),
                weight.new_zeros(1, batch_size, layer.hidden_size),
            )
            for layer in self.layers
        ]

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits (T, B, V) for ``tokens`` (T, B), and the state after the last step."""
        x = self.input_dropout(self.embedding(tokens))
        new_state: State = []
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.between_dropout(x)
            x, (h, c) = layer(x, state[index])
            new_state.append((h, c))
        logits = self.decoder(self.output_dropout(x))
        return logits, new_state


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows; the values are carried on."""
    return [(h.detach(), c.detach()) for h, c in state]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
