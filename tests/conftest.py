"""Shared fixtures: a tiny corpus in PTB layout, and configs composed by Hydra's API."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from rnnreg.config.schema import CONF_DIR, RunConfig, register, to_run_config
from rnnreg.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
#: The real corpora: $RNNREG_DATA_DIR (CI sets it), else ../shared/data beside the clone.
SHARED_DATA = Path(os.environ.get("RNNREG_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

register()
# One intra-op thread by default: the tiny models here gain nothing from two, and a second
# process (a training run beside the tests) would otherwise make OpenMP threads wait on each
# other. RNNREG_TEST_THREADS=2 (or OMP_NUM_THREADS=2) runs the suite with the other kernels'
# blocking; make test does both, since results may differ in the last bit between the two.
TEST_THREADS = int(os.environ.get("RNNREG_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1)
torch.set_num_threads(TEST_THREADS)


def write_tiny_corpus(root: Path, name: str = "ptb", seed: int = 0) -> Path:
    """Write a small corpus in PTB layout under ``root/ptb`` (or WikiText-2 layout).

    Sentences come from a tiny grammar so that a model can learn something in a
    few steps; every valid/test word also occurs in train.
    """
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the market", "some traders", "the company"]
    verbs = ["sees", "buys", "sells", "likes", "reports"]
    objects = ["the bond", "shares", "a profit", "the stock", "N dollars", "<unk>"]

    def sentence() -> str:
        return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"

    if name == "ptb":
        folder, pattern = root / "ptb", "ptb.{split}.txt"
    else:
        folder, pattern = root / "wikitext-2", "wiki.{split}.tokens"
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 600), ("valid", 80), ("test", 80)):
        text = "".join(f" {sentence()} \n" for _ in range(lines))
        if name != "ptb":
            text = " = Heading = \n\n" + text  # WikiText has headings and blank lines
        (folder / pattern.format(split=split)).write_text(text)
    return folder


#: ``cpu`` always; ``cuda`` (marker ``gpu``) when a GPU is visible, else reported skipped.
CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device visible")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """The devices a device-agnostic test runs on (``pytest -m gpu`` runs the cuda half)."""
    return torch.device(request.param)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A data_dir holding a tiny PTB-layout corpus."""
    root = tmp_path / "data"
    write_tiny_corpus(root)
    return root


@pytest.fixture
def make_config(tmp_path: Path, tiny_data: Path) -> Callable[..., RunConfig]:
    """Compose ``conf/`` with overrides, on the tiny corpus, into a validated RunConfig."""

    def build(*overrides: str) -> RunConfig:
        base = [
            f"dataset.data_dir={tiny_data}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            "model.embedding_size=16",
            "model.hidden_size=16",
            "model.compile=false",  # compiled loops are tested with a fast backend
            "trainer.device=cpu",  # tests that run elsewhere say so (the device fixture)
            "trainer.batch_size=4",
            "trainer.bptt=8",
            "eval.batch_size=4",
            "eval.bptt=8",
            "trainer.progress=log",
            f"trainer.threads={TEST_THREADS}",
        ]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg: DictConfig = compose("config", overrides=base + list(overrides))
        return to_run_config(cfg)

    return build


def at_step(monkeypatch, n: int, action: Callable[[Trainer], None], before: bool = False):
    """Run ``action(trainer)`` after (or ``before``) the n-th training step of any Trainer:
    a signal, a crash, a preemption at a step boundary of the tests' choosing. Returns
    the original step, to put back with ``monkeypatch.setattr``."""
    original = Trainer._train_step
    calls = {"n": 0}

    def step(self, inputs, targets):
        calls["n"] += 1
        if before and calls["n"] == n:
            action(self)
        result = original(self, inputs, targets)
        if not before and calls["n"] == n:
            action(self)
        return result

    monkeypatch.setattr(Trainer, "_train_step", step)
    return original


@pytest.fixture
def python() -> str:
    return sys.executable
