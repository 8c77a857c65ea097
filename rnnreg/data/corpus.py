"""Corpora, vocabulary, batching and BPTT windows.

A corpus is read from local files ``<data_dir>/<subdir>/<file_pattern>`` first; when
they are missing it falls back to the Hugging Face hub (for users who are online) and
writes the splits there as plain text for next time. Every line becomes its words
plus ``<eos>``; the vocabulary is built from the training split. The tokenized corpus
is cached, keyed by the content hash of the files.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnreg import RnnregError
from rnnreg.config.schema import DatasetConfig
from rnnreg.core.files import atomic_torch_save
from rnnreg.data.hub import fetch_from_hub

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


def _load_cached(path: Path) -> Corpus | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != _CACHE_FORMAT:
            return None
        return Corpus(blob["vocab"], blob["train"], blob["valid"], blob["test"])
    except (FileNotFoundError, NotADirectoryError):  # no cache yet (or no folder for one)
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
        atomic_torch_save(blob, cache_path)
    except RnnregError as exc:  # a cache that cannot be written costs time, not the run
        cause = exc.__cause__
        why = getattr(cause, "strerror", None) or str(cause or exc)
        log.warning(
            "could not write the corpus cache %s (%s); going on without it "
            "(dataset.cache_dir or RNNREG_CACHE_DIR chooses another folder)",
            *(cache_path, why),
        )
    log.info(
        "corpus %s: vocabulary %d, tokens %d / %d / %d",
        cfg.name,
        corpus.vocab_size,
        corpus.train.numel(),
        corpus.valid.numel(),
        corpus.test.numel(),
    )
    return corpus
