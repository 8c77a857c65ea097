"""Corpora, vocabulary, batching and BPTT windows.

A corpus is read from local files ``<data_dir>/<subdir>/<file_pattern>`` first; when
they are missing it falls back to the Hugging Face hub (for users who are online) and
writes the splits there as plain text for next time. Every line becomes its words
plus ``<eos>``; the vocabulary is built from the training split. The tokenized corpus
is cached, keyed by the content hash of the files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnreg import RnnregError
from rnnreg.config import DatasetConfig
from rnnreg.files import atomic_write_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"
_CACHE_FORMAT = 1


@dataclass
class Corpus:
    """Token ids of the three splits and the vocabulary (id -> word)."""

    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def split_paths(cfg: DatasetConfig) -> dict[str, Path]:
    root = Path(cfg.data_dir).expanduser().resolve() / cfg.subdir
    return {split: root / cfg.file_pattern.format(split=split) for split in SPLITS}


def tokenize_lines(lines: Iterator[str] | list[str]) -> list[str]:
    """Every line becomes ``line.split() + ['<eos>']`` (blank lines give a lone ``<eos>``)."""
    words: list[str] = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def read_tokens(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return tokenize_lines(handle)


def build_vocab(words: list[str]) -> list[str]:
    """Words of the training split, most frequent first (ties by spelling): deterministic."""
    counts = Counter(words)
    return sorted(counts, key=lambda word: (-counts[word], word))


def _encode(words: list[str], index: dict[str, int], split: str) -> torch.Tensor:
    unk = index.get(UNK)
    try:
        ids = [index[w] for w in words]
    except KeyError:
        if unk is None:
            missing = next(w for w in words if w not in index)
            raise RnnregError(
                f"the {split} split has the word {missing!r} that is not in the training "
                f"vocabulary and there is no {UNK} token; check the data files"
            ) from None
        ids = [index.get(w, unk) for w in words]
    return torch.tensor(ids, dtype=torch.long)


def _files_hash(paths: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(split.encode())
        with open(paths[split], "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _atomic_torch_save(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_cached(path: Path) -> Corpus | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != _CACHE_FORMAT:
            return None
        return Corpus(blob["vocab"], blob["train"], blob["valid"], blob["test"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt cache is rebuilt, never fatal
        log.warning("ignoring unreadable corpus cache %s (%s); rebuilding it", path, exc)
        return None


def _tokenize_files(paths: dict[str, Path]) -> Corpus:
    words = {split: read_tokens(paths[split]) for split in SPLITS}
    vocab = build_vocab(words["train"])
    index = {w: i for i, w in enumerate(vocab)}
    encoded = {split: _encode(words[split], index, split) for split in SPLITS}
    return Corpus(vocab, encoded["train"], encoded["valid"], encoded["test"])


def load_corpus(cfg: DatasetConfig) -> Corpus:
    """Load ``cfg``'s corpus: local files, else the Hugging Face hub; cached by content hash."""
    paths = split_paths(cfg)
    if not all(p.is_file() for p in paths.values()):
        fetch_from_hub(cfg, paths)
    key = _files_hash(paths)
    cache_path = Path(cfg.cache_dir).expanduser().resolve() / f"{cfg.name}-{key[:20]}.pt"
    corpus = _load_cached(cache_path)
    if corpus is not None:
        log.info("corpus %s from cache %s", cfg.name, cache_path)
        return corpus
    corpus = _tokenize_files(paths)
    try:
        blob = {
            "format": _CACHE_FORMAT,
            "vocab": corpus.vocab,
            "train": corpus.train,
            "valid": corpus.valid,
            "test": corpus.test,
        }
        _atomic_torch_save(blob, cache_path)
    except OSError as exc:
        log.warning("could not write the corpus cache %s (%s)", cache_path, exc)
    log.info(
        "corpus %s: vocabulary %d, tokens %d / %d / %d",
        cfg.name,
        corpus.vocab_size,
        corpus.train.numel(),
        corpus.valid.numel(),
        corpus.test.numel(),
    )
    return corpus


# --- the Hugging Face fallback ---------------------------------------------------------


def _host_resolves(host: str, timeout_s: float) -> bool:
    """Whether DNS answers for ``host`` within ``timeout_s`` (getaddrinfo has no timeout)."""
    answer: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(answer and answer[0])


def hub_online(timeout_s: float = 2.0) -> bool:
    """False when the user asked for offline mode or the hub's host does not resolve quickly.

    In that case the hub's offline mode is switched on, so that ``datasets`` fails (or
    reads its local cache) in under a second instead of retrying for half a minute.
    """
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if _host_resolves(host, timeout_s):
        return True
    for flag in flags:
        os.environ[flag] = "1"
    return False


def _missing_files_error(cfg: DatasetConfig, paths: dict[str, Path], why: str) -> RnnregError:
    folder = paths["train"].parent
    names = ", ".join(p.name for p in paths.values())
    return RnnregError(
        f"{cfg.name} files not found: expected {names} in {folder} ({why}); put the files "
        f"there, or point RNNREG_DATA_DIR (or dataset.data_dir) at the folder that holds "
        f"{cfg.subdir}/, or run once with internet access to download them from {cfg.hf_path}"
    )


def fetch_from_hub(cfg: DatasetConfig, paths: dict[str, Path]) -> None:
    """Download ``cfg``'s splits with ``datasets`` and write them to ``paths`` as text."""
    online = hub_online()
    try:
        import datasets  # imported late: it reads the offline flags at import time
    except ImportError as exc:
        raise _missing_files_error(cfg, paths, "the 'datasets' package is missing") from exc
    datasets.logging.set_verbosity_error()
    try:
        loaded = datasets.load_dataset(cfg.hf_path, cfg.hf_name, revision=cfg.hf_revision)
    except Exception as exc:  # any hub failure means: no files, tell the user where to put them
        why = "the Hugging Face hub is unreachable" if not online else f"download failed: {exc}"
        raise _missing_files_error(cfg, paths, why.splitlines()[0]) from exc
    for split, hf_split in zip(SPLITS, cfg.hf_splits, strict=True):
        rows = loaded[hf_split][cfg.hf_column]
        target = paths[split]
        text = "".join(row.rstrip("\n") + "\n" for row in rows)
        try:
            atomic_write_bytes(target, text.encode("utf-8"))
        except RnnregError as exc:
            raise RnnregError(f"{exc}; or set dataset.data_dir to a writable folder") from exc
    log.info("downloaded %s from the hub into %s", cfg.name, paths["train"].parent)


# --- batches -------------------------------------------------------------------------------


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
    """AWD-LSTM's window length: base = bptt w.p. 0.95 else bptt/2; max(5, round(N(base, 5)))."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return max(5, round(rng.gauss(base, 5)))


def window_at(source: torch.Tensor, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[s:s+L]`` and targets ``source[s+1:s+1+L]``, cut at the end."""
    length = min(length, source.size(0) - 1 - start)
    return source[start : start + length], source[start + 1 : start + 1 + length]
