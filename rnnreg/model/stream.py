"""Running a model over a split: evaluation mode for a block, and a stream of windows.

A split (T, B) is read in order, one BPTT window after another, the hidden state carried
from each window to the next and detached (every predicted token is scored once, with the
whole history before it as state): the shape every evaluation shares.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rnnreg.data.batching import windows
from rnnreg.model.lm import LanguageModel, State, detach_state


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in evaluation mode (every mask at its expectation) for the block, then
    back in the mode it was in, however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Stream:
    """The (T, B) ``source`` as consecutive windows of ``bptt`` steps, from a zero state of
    ``rows`` rows (default B; MC dropout runs K replicas of each row):

        stream = Stream(model, source, bptt)
        for index, inputs, targets in stream:
            logits = stream.forward(inputs)     # the state carried on, detached
    """

    def __init__(
        self, model: LanguageModel, source: torch.Tensor, bptt: int, rows: int | None = None
    ) -> None:
        self.model, self.source, self.bptt = model, source, bptt
        self.state: State = model.init_state(rows or source.size(1))

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        return windows(self.source, self.bptt)

    def forward(self, inputs: torch.Tensor, **options: Any) -> torch.Tensor:
        """The window's logits (T, rows, V); ``options`` go to the model (``mc``,
        ``activations``)."""
        logits, state = self.model(inputs, self.state, **options)
        self.state = detach_state(state)
        return logits
