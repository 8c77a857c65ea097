"""The checks of ``rnnreg verify`` that train: composition and SIGKILL-and-resume.

* **composition**: the variant with Zaremba's masks (0.5 on the inputs, between the layers
  and on the output, where the variant has none) and weight-drop (p_weight 0.5) trains a
  few steps of a tiny language model: the loss stays finite, every parameter moves, and
  both sets of masks are drawn;
* **resume**: ``rnnreg train`` on a tiny synthetic corpus, killed with SIGKILL inside an
  optimizer step of its second epoch and resumed, ends with the uninterrupted run's
  ``metrics.csv`` and perplexities.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rnnreg.config.schema import Cell, Granularity, ModelConfig, VariantConfig
from rnnreg.model.lm import LanguageModel
from rnnreg.verification.checks import Check

VOCAB = 30


def composed(variant: VariantConfig) -> VariantConfig:
    """``variant`` with Zaremba's rates where it has none, and weight-drop 0.5."""
    extra = {
        name: 0.5 for name in ("p_input", "p_between", "p_output") if getattr(variant, name) == 0.0
    }
    if extra and not any(getattr(variant, n) > 0 for n in ("p_input", "p_between", "p_output")):
        extra["activation_granularity"] = Granularity.step  # Zaremba's own
    return replace(variant, **extra, p_weight=variant.p_weight or 0.5)


def composition_check(variant: VariantConfig, steps: int = 3, cell: Cell = Cell.lstm) -> Check:
    """A few SGD steps of a tiny model of ``cell`` with the composed variant."""
    both = composed(variant)
    torch.manual_seed(0)
    config = ModelConfig(name="tiny", embedding_size=8, hidden_size=8, compile=False, cell=cell)
    model = LanguageModel(VOCAB, config, both).train()
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(VOCAB, (7, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        logits, _ = model(tokens[:-1], model.init_state(3))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    moved = all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    layer = model.layers[0]
    masks = layer.draw_masks(6, 3, tokens.device, torch.float32)
    rule_masks = layer.rule_masks(torch.zeros(6, 3, layer.input_size), masks)
    declared = [m.name for m in layer.rule.declared() if m.rate > 0]
    missing = [n for n in declared if rule_masks.get(n) is None and n != "weight_hh"]
    weight = masks.weight_hh is not None
    outside = model.output_dropout.p > 0
    ok = all(map(torch.isfinite, map(torch.tensor, losses))) and moved and weight and outside
    ok = ok and not missing
    detail = (
        f"{steps} steps with zaremba 0.5 + weight_drop {both.p_weight}: loss "
        f"{losses[0]:.3f} → {losses[-1]:.3f}, parameters moved {moved}; weight mask "
        f"{weight}, output mask {outside}, rule masks {declared or 'none'}"
        f"{' missing ' + str(missing) if missing else ''}"
    )
    return Check("composition", ok, detail)


TRAIN = (
    "model.embedding_size=8",
    "model.hidden_size=8",
    "model.compile=false",
    "trainer.batch_size=4",
    "trainer.bptt=6",
    "eval.batch_size=4",
    "eval.bptt=6",
    "trainer.epochs=2",
    "trainer.threads=1",
    "trainer.progress=log",
    "logger=tensorboard",
    "trainer.checkpoint_every_s=0.05",
)


def write_corpus(root: Path) -> Path:
    """A tiny PTB-layout corpus from a small grammar (every valid/test word is in train)."""
    rng = random.Random(0)
    words = [
        ["the", "a", "some"],
        ["cat", "dog", "market"],
        ["sees", "buys", "sells"],
        ["shares", "bonds", "N"],
    ]
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = "".join(" " + " ".join(rng.choice(w) for w in words) + " \n" for _ in range(lines))
        (folder / f"ptb.{split}.txt").write_text(text)
    return root


def _train(argv: list[str], run_dir: Path, env: dict[str, str], **popen: object):
    command = [sys.executable, "-m", "rnnreg.train", *argv, *TRAIN, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen
    )  # type: ignore[call-overload]


def _finished(process: subprocess.Popen, what: str) -> str | None:
    _, err = process.communicate(timeout=300)
    if process.returncode != 0:
        return f"{what} exited {process.returncode}: {err.strip().splitlines()[-1][:150]}"
    return None


def _numbers(run_dir: Path) -> tuple[str, tuple]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    # elapsed_s and tokens/s differ between runs; the metrics do not
    kept = "\n".join(",".join(r.split(",")[:5]) for r in rows)
    return kept, (summary.get("best_val_ppl"), summary.get("test_ppl"))


def resume_check(argv: list[str], kill_at: str = "step:80") -> Check:
    """Train, train again killed with SIGKILL at ``kill_at`` and resumed; same numbers."""
    with tempfile.TemporaryDirectory(prefix="rnnreg-verify-") as tmp:
        root = Path(tmp)
        env = dict(
            os.environ,
            RNNREG_DATA_DIR=str(write_corpus(root / "data")),
            RNNREG_CACHE_DIR=str(root / "cache"),
            RNNREG_OUTPUTS=str(root / "out"),
        )
        env.pop("RNNREG_TEST_PAUSE", None)
        failed = _finished(_train(argv, root / "whole", env), "the uninterrupted run")
        if failed:
            return Check("resume", False, failed)
        marker = root / "marker"
        killed = _train(
            argv,
            root / "killed",
            dict(env, RNNREG_TEST_PAUSE=kill_at, RNNREG_TEST_MARKER=str(marker)),
        )
        deadline = time.monotonic() + 240
        while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not marker.exists():
            killed.kill()
            return Check("resume", False, f"the run never reached {kill_at}")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        resumed = _train([*argv, "trainer.resume=true"], root / "killed", env)
        failed = _finished(resumed, "the resumed run")
        if failed:
            return Check("resume", False, failed)
        whole, again = _numbers(root / "whole"), _numbers(root / "killed")
        same = whole == again
        return Check(
            "resume",
            same,
            f"SIGKILL at {kill_at}, resumed: metrics.csv and "
            f"best val / test {'equal' if same else 'DIFFER'} ({whole[1]} vs {again[1]})",
        )
