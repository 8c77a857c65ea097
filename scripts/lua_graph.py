"""Gal's ``main_new_dropout_SOTA.lua`` written again as plain autograd, to train beside ours.

    python scripts/lua_graph.py [--seed 1] [--steps 1207] [--threads 1] [--out CSV]

An independent second implementation of the graph and loop of the Lua script
(yaringal/BayesianRNN, ``LM_code/main_new_dropout_SOTA.lua``; the settings of
``conf/experiment/gal_large_log.yaml``), whose model and training share nothing with ``rnnreg``:
its own vocabulary (first occurrence, as ``data.lua``), its own batching (``replicate``),
one pair of weight matrices per gate (``i2h[k]``, ``h2h[k]``, each with its bias, as the
script's ``nn.Linear`` per gate), autograd's backward and the script's update. Per
35-step window (``sample_noise``):

    x^1_t = e_t · z^x_{t,b} ∘ z^i_{1,k}          z^x: one Bernoulli(0.7)/0.7 per token
    pre_k = W_k (x^l_t ∘ z^i_{l,k}) + b_k + U_k (h^l_{t-1} ∘ z^h_{l,k}) + c_k
    (in, g, f, o) = (σ, tanh, σ, σ)(pre_{1..4})     c_t = f c_{t-1} + in g,  h_t = o tanh c_t
    y_t = D (h^2_t ∘ z^o) + d                    z^i, z^h, z^o: one per row and window

    loss = Σ_t mean_b NLL_t;  g ← g · min(1, 10 / ‖g‖);  θ ← θ − g;  θ ← θ − 1e-7 θ

It prints the log's ring-buffer statistic and, between two of the log's prints, the mean
window perplexity ``scripts/first_steps.py`` derives from them, beside the log's; with
``--out`` every window's loss goes to a CSV. The log's statistic and its reading are
``scripts/first_steps.py``'s; the model and its training share nothing with rnnreg.
If this curve follows ours and not the log's, the difference lies outside what the
script's text says.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import time
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from first_steps import interval_perplexity, log_steps, ring_perplexity  # same folder

HIDDEN, LAYERS, BATCH, BPTT, VOCAB = 1250, 2, 20, 35, 10000
P_X, P_I, P_H, P_O = 0.3, 0.5, 0.3, 0.5
INIT, LR, CLIP, WEIGHT_DECAY = 0.04, 1.0, 10.0, 1e-7


def train_matrix(path: Path) -> torch.Tensor:
    """``data.lua``: '\\n' → '<eos>', ids by first occurrence, then ``replicate``: column i
    starts at round((i-1) s / B) + 1 (1-based), floor(s / B) rows."""
    words = path.read_text().replace("\n", "<eos>").split()
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(w, len(index)) for w in words])
    s, rows = ids.numel(), ids.numel() // BATCH
    starts = [math.floor((i * s / BATCH) + 0.5) for i in range(BATCH)]  # torch.round
    return torch.stack([ids[start : start + rows] for start in starts], dim=1)


def parameters(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every tensor U(-0.04, 0.04), as ``getParameters():uniform``; gate k is row k."""
    shapes = {"embedding": (VOCAB, HIDDEN), "decoder": (VOCAB, HIDDEN), "decoder_bias": (VOCAB,)}
    for layer in range(LAYERS):
        shapes |= {f"W{layer}": (4, HIDDEN, HIDDEN), f"b{layer}": (4, 1, HIDDEN)}
        shapes |= {f"U{layer}": (4, HIDDEN, HIDDEN), f"c{layer}": (4, 1, HIDDEN)}
    return {
        name: (torch.rand(shape, generator=generator) * 2 * INIT - INIT).requires_grad_()
        for name, shape in shapes.items()
    }


def bernoulli(shape: tuple[int, ...], p: float, generator: torch.Generator) -> torch.Tensor:
    """1/(1-p) with probability 1-p, else 0 (``bernoulli(1-p):div(1-p)``)."""
    return (torch.rand(shape, generator=generator) >= p).float() / (1 - p)


def window_loss(
    theta: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    targets: torch.Tensor,
    state: list[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Σ_t mean_b NLL of one window under freshly drawn masks, and the state after it."""
    steps = tokens.size(0)
    z_x = bernoulli((steps, BATCH, 1), P_X, generator)
    x = theta["embedding"][tokens] * z_x  # (T, B, H)
    new_state = []
    for layer in range(LAYERS):
        z_i = bernoulli((4, BATCH, HIDDEN), P_I, generator)
        z_h = bernoulli((4, BATCH, HIDDEN), P_H, generator)
        W, b, U, c = (theta[f"{n}{layer}"] for n in "WbUc")
        # (T, 4, B, H): each gate's own masked copy of the input, through its own matrix
        x_proj = torch.einsum("tkbh,kjh->tkbj", x.unsqueeze(1) * z_i, W) + b
        h, cell = state[layer]
        outputs = []
        for t in range(steps):
            pre = x_proj[t] + torch.bmm(h.unsqueeze(0) * z_h, U.transpose(1, 2)) + c
            in_gate, transform = torch.sigmoid(pre[0]), torch.tanh(pre[1])
            forget, out_gate = torch.sigmoid(pre[2]), torch.sigmoid(pre[3])
            cell = forget * cell + in_gate * transform
            h = out_gate * torch.tanh(cell)
            outputs.append(h)
        new_state.append((h.detach(), cell.detach()))
        x = torch.stack(outputs)
    z_o = bernoulli((BATCH, HIDDEN), P_O, generator)
    logits = (x * z_o) @ theta["decoder"].T + theta["decoder_bias"]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    return nll.view(steps, BATCH).mean(1).sum(), new_state


def update(theta: dict[str, torch.Tensor]) -> float:
    """The script's ``bp`` tail: clip the whole gradient to norm 10, step lr 1, decay."""
    grads = [p.grad for p in theta.values()]
    norm = torch.sqrt(sum((g * g).sum() for g in grads)).item()
    shrink = min(1.0, CLIP / norm)
    with torch.no_grad():
        for p in theta.values():
            p.sub_(LR * shrink * p.grad)
            p.sub_(WEIGHT_DECAY * p)
            p.grad = None
    return norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1207)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="CSV of every window's loss and grad norm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("RNNREG_DATA_DIR", "data")) / "ptb"
    data = train_matrix(data_dir / "ptb.train.txt")
    generator = torch.Generator().manual_seed(args.seed)
    theta = parameters(generator)
    zeros = torch.zeros(BATCH, HIDDEN)
    state = [(zeros, zeros) for _ in range(LAYERS)]
    log = {step: perp for step, (perp, _) in log_steps().items()}
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(args.out, "w", newline="")) if args.out else None
        if sink is not None:
            csv.writer(sink).writerow(["step", "loss", "grad_norm"])
        train(theta, data, state, generator, args.steps, log, sink)


def train(
    theta: dict[str, torch.Tensor],
    data: torch.Tensor,
    state: list[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
    steps: int,
    log: dict[int, float],
    sink: TextIO | None,
) -> None:
    """The script's loop for ``steps`` windows, printing at the log's steps; each window's
    loss goes to ``sink`` (flushed, so a killed run keeps what it computed)."""
    writer = csv.writer(sink) if sink is not None else None
    losses: list[float] = []
    last, start = None, time.monotonic()
    for step in range(1, steps + 1):
        tokens = data[(step - 1) * BPTT : step * BPTT + 1]
        loss, state = window_loss(theta, tokens[:-1], tokens[1:], state, generator)
        loss.backward()
        norm = update(theta)
        losses.append(loss.item() / BPTT)
        if writer is not None and sink is not None:
            writer.writerow([step, f"{losses[-1]:.6f}", f"{norm:.4f}"])
            sink.flush()
        if step not in log:
            continue
        line = f"{step} | ring {ring_perplexity(losses):.1f} / log {log[step]:.1f}"
        if last is not None:
            ours = math.exp(sum(losses[last:]) / (step - last))
            theirs = interval_perplexity(losses[0], (last, log[last]), (step, log[step]))
            change = 100 * (ours / theirs - 1)
            line += f" | ({last}, {step}]: {ours:.1f} / {theirs:.1f} ({change:+.1f}%)"
        print(f"{line} | grad norm {norm:.2f} | {time.monotonic() - start:.0f} s", flush=True)
        last = step


if __name__ == "__main__":
    main()
