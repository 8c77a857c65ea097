"""Batches and BPTT windows: the token stream as (T, B) columns, fixed-length windows in order,
and AWD-LSTM's variable window length."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rnnreg import RnnregError
from rnnreg.config.schema import RunConfig
from rnnreg.data.corpus import Corpus

log = logging.getLogger(__name__)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the token stream into ``batch_size`` contiguous columns: shape (T, B).

    The tail that does not fill a whole row is dropped, as in the papers' code.
    """
    rows = ids.numel() // batch_size
    if rows < 2:
        raise RnnregError(
            f"a split of {ids.numel()} tokens is too short for batch size {batch_size}"
        )
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()


def num_windows(source: torch.Tensor, bptt: int) -> int:
    """How many BPTT windows cover the (T, B) ``source`` (every target exactly once)."""
    return -(-(source.size(0) - 1) // bptt)


def window(source: torch.Tensor, index: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``index``-th fixed-length window."""
    return window_at(source, index * bptt, bptt)


def windows(
    source: torch.Tensor, bptt: int, start_index: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Fixed-length BPTT windows in order, from ``start_index`` (for a resumed epoch)."""
    for index in range(start_index, num_windows(source, bptt)):
        inputs, targets = window(source, index, bptt)
        yield index, inputs, targets


def variable_bptt_length(rng: random.Random, bptt: int) -> int:
    """AWD-LSTM's window length: base = bptt w.p. 0.95 else bptt/2; max(5, int(N(base, 5))).

    ``int`` truncates, as AWD's ``main.py`` does (``int(np.random.normal(bptt, 5))``): the
    mean is about half a step below the base."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return max(5, int(rng.gauss(base, 5)))


def window_at(source: torch.Tensor, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[s:s+L]`` and targets ``source[s+1:s+1+L]``, cut at the end."""
    length = min(length, source.size(0) - 1 - start)
    return source[start : start + length], source[start + 1 : start + 1 + length]


@dataclass
class Batched:
    """The three splits as (T, B) columns on the run's device."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def batched_splits(corpus: Corpus, run: RunConfig, device: torch.device) -> Batched:
    """Training columns at ``trainer.batch_size``, validation at ``eval.batch_size``, test
    at ``eval.test_batch_size``; one line when a window is longer than its split (one
    window an epoch: an error for training, a warning for evaluation)."""
    t, e = run.trainer, run.eval
    splits = Batched(
        batchify(corpus.train, t.batch_size).to(device),
        batchify(corpus.valid, e.batch_size).to(device),
        batchify(corpus.test, e.test_batch_size).to(device),
    )
    rows = splits.train.size(0) - 1
    if t.bptt > rows:
        raise RnnregError(
            f"trainer.bptt={t.bptt} is longer than the training split ({rows} rows at batch "
            f"{t.batch_size}): every epoch would be one window; choose trainer.bptt <= {rows}"
        )
    shortest = min(splits.valid.size(0), splits.test.size(0)) - 1
    if e.bptt > shortest:
        log.warning(
            "eval.bptt=%d is longer than an evaluation split (%d rows): it is scored as one "
            "window; a shorter eval.bptt needs less memory",
            *(e.bptt, shortest),
        )
    return splits
