"""Training throughput of every variant as a ratio to ``variant=none`` on the fused path.

    python scripts/bench.py                          # model=small and model=medium
    python scripts/bench.py --models small --rounds 5 --steps 4 --eager

All configurations are built in one process and run round-robin (a few steps each, the
order reversed every round), so that the drift of this machine between processes does
not enter the ratios; the figures are medians over rounds. One step is what the trainer
does: forward, loss summed over the window, backward, clipping, SGD. Tokens are random
ids (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from rnnreg.config import CONF_DIR, group_options, register, to_run_config
from rnnreg.model import LanguageModel, detach_state
from rnnreg.train import tune_malloc

VOCAB = 10_000


def build(model_name: str, variant: str, compile_loop: bool, extra: list[str]):
    overrides = [
        f"model={model_name}",
        f"variant={variant}",
        f"model.compile={str(compile_loop).lower()}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=overrides))
    torch.manual_seed(0)
    model = LanguageModel(VOCAB, run.model, run.variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return run, model, optimizer


def train_steps(model, optimizer, batch: int, bptt: int, steps: int, clip: float) -> float:
    """Seconds for ``steps`` training steps of (bptt, batch) windows."""
    model.train()
    state = model.init_state(batch)
    tokens = torch.randint(0, VOCAB, (steps, bptt + 1, batch))
    started = time.perf_counter()
    for k in range(steps):
        inputs, targets = tokens[k, :-1], tokens[k, 1:]
        logits, state = model(inputs, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)) * bptt
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return time.perf_counter() - started


def bench_model(model_name: str, variants: list[str], args: argparse.Namespace) -> None:
    shapes = {"small": (20, 20), "medium": (20, 35), "large": (20, 35)}
    batch, bptt = shapes.get(model_name, (20, 35))
    built = {v: build(model_name, v, args.compile, args.override) for v in variants}
    for _, model, optimizer in built.values():  # warm-up (and compilation)
        train_steps(model, optimizer, batch, bptt, 2, 5.0)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    order = list(variants)
    for _ in range(args.rounds):
        for v in order:
            _, model, optimizer = built[v]
            seconds = train_steps(model, optimizer, batch, bptt, args.steps, 5.0)
            rates[v].append(args.steps * batch * bptt / seconds)
        order.reverse()
    base = statistics.median(rates["none"])
    print(
        f"\nmodel={model_name} (batch {batch}, bptt {bptt}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps, compile={args.compile})"
    )
    print(f"{'variant':<14}{'path':<13}{'tokens/s':>10}{'ratio':>8}   spread")
    for v in variants:
        median = statistics.median(rates[v])
        model = built[v][1]
        # what actually ran: a loop that fell back to eager says so (rnnreg/recurrence.py)
        path = model.lstm_path + (f"-{model.loop_mode}" if model.loop_mode else "")
        spread = f"{min(rates[v]):.0f}-{max(rates[v]):.0f}"
        print(f"{v:<14}{path:<13}{median:>10.0f}{median / base:>8.2f}   {spread}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "medium"])
    parser.add_argument("--variants", nargs="+", default=None, help="default: all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--eager",
        dest="compile",
        action="store_false",
        help="run the loop path eagerly instead of under torch.compile",
    )
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    args = parser.parse_args()
    register()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants or group_options("variant")
    if "none" not in variants:
        variants = ["none", *variants]
    for model_name in args.models:
        bench_model(model_name, variants, args)


if __name__ == "__main__":
    main()
