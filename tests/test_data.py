"""Corpus loading, the hub fallback, the cache, batching and BPTT windows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from rnnreg import RnnregError
from rnnreg.config.schema import DatasetConfig
from rnnreg.data import batching, hub
from rnnreg.data import corpus as corpora
from tests.conftest import SHARED_DATA, write_tiny_corpus


def dataset_config(data_dir: Path, cache_dir: Path, name: str = "ptb") -> DatasetConfig:
    if name == "ptb":
        return DatasetConfig(
            name="ptb",
            data_dir=str(data_dir),
            cache_dir=str(cache_dir),
            subdir="ptb",
            file_pattern="ptb.{split}.txt",
            hf_path="ptb-text-only/ptb_text_only",
            hf_revision="refs/convert/parquet",
            hf_column="sentence",
        )
    return DatasetConfig(
        name="wikitext2",
        data_dir=str(data_dir),
        cache_dir=str(cache_dir),
        subdir="wikitext-2",
        file_pattern="wiki.{split}.tokens",
        hf_path="Salesforce/wikitext",
        hf_name="wikitext-2-v1",
        hf_column="text",
    )


@pytest.mark.skipif(
    not (SHARED_DATA / "ptb" / "ptb.train.txt").is_file(),
    reason=f"real PTB not found in {SHARED_DATA}/ptb (set RNNREG_DATA_DIR; CI does)",
)
def test_real_ptb_has_the_published_sizes(tmp_path: Path) -> None:
    corpus = corpora.load_corpus(dataset_config(SHARED_DATA, tmp_path / "cache"))
    assert corpus.vocab_size == 10_000
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (
        929_589,
        73_760,
        82_430,
    )
    assert corpus.vocab[int(corpus.train[-1])] == "<eos>"


def test_every_line_ends_with_eos_and_vocab_comes_from_train(tiny_data: Path, tmp_path: Path):
    corpus = corpora.load_corpus(dataset_config(tiny_data, tmp_path / "cache"))
    train_lines = (tiny_data / "ptb" / "ptb.train.txt").read_text().splitlines()
    expected_words = sum(len(line.split()) + 1 for line in train_lines)
    assert corpus.train.numel() == expected_words
    eos = corpus.vocab.index("<eos>")
    assert int((corpus.train == eos).sum()) == len(train_lines)
    train_words = {w for line in train_lines for w in line.split()} | {"<eos>"}
    assert set(corpus.vocab) == train_words
    # most frequent first
    counts = torch.bincount(corpus.train, minlength=corpus.vocab_size)
    assert torch.all(counts[:-1] >= counts[1:])


def test_wikitext_blank_lines_become_eos(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_tiny_corpus(root, name="wikitext2")
    corpus = corpora.load_corpus(dataset_config(root, tmp_path / "cache", name="wikitext2"))
    lines = (root / "wikitext-2" / "wiki.valid.tokens").read_text().split("\n")[:-1]
    assert corpus.valid.numel() == sum(len(line.split()) + 1 for line in lines)
    # " = Heading = " then a blank line: = Heading = <eos> <eos>
    assert corpus.vocab[int(corpus.valid[3])] == "<eos>"
    assert corpus.vocab[int(corpus.valid[4])] == "<eos>"


def test_second_load_comes_from_the_cache(tiny_data: Path, tmp_path: Path, monkeypatch):
    cfg = dataset_config(tiny_data, tmp_path / "cache")
    first = corpora.load_corpus(cfg)
    assert len(list((tmp_path / "cache").glob("ptb-*.pt"))) == 1

    def no_tokenizing(paths):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(corpora, "_tokenize_files", no_tokenizing)
    second = corpora.load_corpus(cfg)
    assert torch.equal(first.train, second.train) and first.vocab == second.vocab


def test_cache_is_keyed_by_content(tiny_data: Path, tmp_path: Path) -> None:
    cfg = dataset_config(tiny_data, tmp_path / "cache")
    first = corpora.load_corpus(cfg)
    train = tiny_data / "ptb" / "ptb.train.txt"
    train.write_text(train.read_text() + " a brand new line \n")
    second = corpora.load_corpus(cfg)
    assert second.train.numel() == first.train.numel() + 5
    assert "brand" in second.vocab


def test_corrupt_cache_is_rebuilt(tiny_data: Path, tmp_path: Path) -> None:
    cfg = dataset_config(tiny_data, tmp_path / "cache")
    first = corpora.load_corpus(cfg)
    (cache,) = (tmp_path / "cache").glob("ptb-*.pt")
    cache.write_bytes(b"not a torch file")
    assert torch.equal(corpora.load_corpus(cfg).train, first.train)


def test_offline_without_files_is_one_fast_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_host_resolves", lambda host, timeout_s: False)
    cfg = dataset_config(tmp_path / "nothing", tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(RnnregError) as caught:
        corpora.load_corpus(cfg)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "nothing" / "ptb") in message
    assert "ptb.train.txt" in message and "RNNREG_DATA_DIR" in message


def test_hub_fallback_writes_the_files_for_next_time(tmp_path: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(hub, "hub_online", lambda timeout_s=2.0: True)
    calls = []

    def fake_load_dataset(path, name=None, revision=None):
        calls.append((path, name, revision))
        rows = {"train": ["a b c", "b c"], "validation": ["a b"], "test": ["c a"]}
        return {split: {"sentence": sentences} for split, sentences in rows.items()}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = dataset_config(tmp_path / "fresh", tmp_path / "cache")
    corpus = corpora.load_corpus(cfg)
    assert calls == [("ptb-text-only/ptb_text_only", None, "refs/convert/parquet")]
    assert (tmp_path / "fresh" / "ptb" / "ptb.valid.txt").read_text() == "a b\n"
    assert corpus.train.numel() == 7 and corpus.vocab_size == 4
    corpora.load_corpus(cfg)  # second time: from the files, no download
    assert len(calls) == 1


def test_batchify_makes_contiguous_columns() -> None:
    ids = torch.arange(23)
    batched = batching.batchify(ids, 4)
    assert batched.shape == (5, 4)
    assert batched[:, 1].tolist() == [5, 6, 7, 8, 9]


def test_windows_cover_every_target_exactly_once() -> None:
    source = batching.batchify(torch.arange(101), 4)  # 25 rows
    seen = []
    for _, inputs, targets in batching.windows(source, 7):
        assert torch.equal(targets[:-1], inputs[1:])
        seen.append(targets)
    targets = torch.cat(seen)
    assert targets.shape[0] == source.shape[0] - 1 == 24
    assert torch.equal(targets, source[1:])
    assert batching.num_windows(source, 7) == 4
    resumed = [index for index, _, _ in batching.windows(source, 7, start_index=2)]
    assert resumed == [2, 3]


def test_an_unwritable_cache_warns_and_the_run_goes_on(tiny_data: Path, tmp_path: Path, caplog):
    """The cache saves time only: a folder that cannot be written (here: a file in its
    place) is one warning, and the corpus is still returned."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with caplog.at_level("WARNING"):
        loaded = corpora.load_corpus(dataset_config(tiny_data, blocked / "cache"))
    assert loaded.train.numel() > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "could not write the corpus cache" in warnings[0]


def test_a_window_longer_than_its_split_is_one_line(make_config, tmp_path: Path, caplog) -> None:
    from rnnreg.training.trainer import Trainer

    with pytest.raises(RnnregError, match="trainer.bptt=100000 is longer than the training"):
        Trainer(make_config("trainer.bptt=100000"), tmp_path / "a")
    with caplog.at_level("WARNING"):
        Trainer(make_config("eval.bptt=100000"), tmp_path / "b")
    assert any("eval.bptt=100000 is longer" in r.getMessage() for r in caplog.records)
