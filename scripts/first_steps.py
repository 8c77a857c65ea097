"""The first steps of ``experiment=gal_large_log`` against Gal's log, step by step.

    python scripts/first_steps.py [--seed 1] [--steps 409] [OVERRIDE ...]

The log (``LM_code/main_new_dropout_SOTA.log``, yaringal/BayesianRNN) prints every 133
steps the "train perp." of a ring buffer of E = 1327 window losses that starts filled
with the first window's loss L_1:

    train_perp_s = exp(((E − s) L_1 + Σ_{i≤s} L_i) / E)        (s ≤ E)

and the gradient's norm before clipping at that step. Between two prints s < s' the
buffer gives the mean loss of the steps in (s, s'], which is sharper than the buffer:

    mean_(s, s'] = E (ln train_perp_s' − ln train_perp_s) / (s' − s) + L_1

(the log's L_1 is taken as ours: both start from near-uniform predictions, ln 10000 =
9.2103 nats, within a few thousandths). This script trains our preset for
``--steps`` steps from the seed's initialisation (eager, no validation, nothing written
but a temporary folder), computes the same statistic from our own window losses, and
prints it beside the log's (rnnreg/reporting/reference/steps_gal_large_log.csv). It
checks what the first epoch depends on before a whole epoch is spent: the loss
normalisation, the learning rate, the clipping and the initialisation. A single step's
gradient norm is noisy (ours ranges 6–500 in the first ten steps); compare the trend.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from rnnreg.config.schema import CONF_DIR, register, to_run_config
from rnnreg.data.batching import window
from rnnreg.reporting.curves import REFERENCE

RING = 1327  # the log's epoch_size: floor(46479 rows / 35)


def log_steps() -> dict[int, tuple[float, float]]:
    """``{step: (train_perp, dw_norm)}`` of the log's first epoch."""
    with open(REFERENCE / "steps_gal_large_log.csv", newline="") as handle:
        rows = csv.DictReader(handle)
        return {int(r["step"]): (float(r["train_perp"]), float(r["dw_norm"])) for r in rows}


def ring_perplexity(losses: list[float]) -> float:
    """The log's train perp after ``len(losses)`` steps (the formula above)."""
    s = len(losses)
    return math.exp(((RING - s) * losses[0] + sum(losses)) / RING)


def interval_perplexity(
    first_loss: float, before: tuple[int, float], after: tuple[int, float]
) -> float:
    """exp(mean loss of the steps between two prints), from their ``(step, train_perp)``."""
    (s0, p0), (s1, p1) = before, after
    return math.exp(RING * (math.log(p1) - math.log(p0)) / (s1 - s0) + first_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=409)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()
    from rnnreg.training.trainer import Trainer

    register()
    base = ["experiment=gal_large_log", f"seed={args.seed}", "model.compile=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=base + args.overrides))
    trainer = Trainer(run, Path(tempfile.mkdtemp(prefix="first-steps-")))
    trainer.model.train()
    state = trainer.model.init_state(run.trainer.batch_size)
    reference, losses, start = log_steps(), [], time.monotonic()
    print(
        "step | train_perp ours / log / difference | since the last print: ppl ours / log "
        "/ difference | grad norm ours / log"
    )
    last = None
    for step in range(1, args.steps + 1):
        inputs, targets = window(trainer.train_data, step - 1, run.trainer.bptt)
        state = trainer.step(inputs, targets, state, step)
        nll, grad_norm, _, _, tokens = trainer.totals.read()
        losses.append(nll / tokens)
        if step not in reference:
            continue
        ours, (log, log_norm) = ring_perplexity(losses), reference[step]
        line = f"{step} | {ours:.1f} / {log:.1f} / {_diff(ours, log)} |"
        if last is not None:
            ours_mean = math.exp(sum(losses[last:]) / (step - last))
            log_mean = interval_perplexity(losses[0], (last, reference[last][0]), (step, log))
            line += f" {ours_mean:.1f} / {log_mean:.1f} / {_diff(ours_mean, log_mean)} |"
        else:
            line += " – |"
        elapsed = time.monotonic() - start
        print(f"{line} {grad_norm:.2f} / {log_norm:.2f}   ({elapsed:.0f} s)", flush=True)
        last = step


def _diff(ours: float, log: float) -> str:
    return f"{100 * (ours - log) / log:+.1f}%"


if __name__ == "__main__":
    main()
