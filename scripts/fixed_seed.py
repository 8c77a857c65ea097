"""Fixed-seed short runs of every variant: the numbers a refactor must leave unchanged.

    python scripts/fixed_seed.py OUT.json [--steps 50] [--compare BEFORE.json]

Each variant of ``conf/variant`` (and Gal with MC dropout drawn once per stream) trains
``--steps`` steps of the small model on PTB (seed 1, eager loop path, one thread),
then is validated, tested and MC-evaluated with 2 samples. The summary numbers go to
``OUT.json``; ``--compare`` prints the largest relative difference to an earlier file
and exits 1 when any number differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from rnnreg.config.schema import CONF_DIR, group_options, register, to_run_config

NUMBERS = ("best_val_ppl", "last_val_ppl", "test_ppl_best", "test_ppl_final")
MC_NUMBERS = ("val_ppl_mc", "test_ppl_mc")

#: (name, overrides) of every case: each variant, plus MC masks held for the stream.
CASES = [(name, [f"variant={name}"]) for name in group_options("variant")] + [
    ("gal_mc_stream", ["variant=gal", "eval.mc_mask_draw=stream"]),
]


def run_case(overrides: list[str], steps: int, folder: Path) -> dict[str, float]:
    from rnnreg.training.trainer import Trainer

    base = [
        f"trainer.max_steps={steps}",
        "trainer.epochs=1",
        "trainer.threads=1",
        "trainer.progress=log",
        "model.compile=false",
        "eval.test_batch_size=20",
        "eval.mc_samples=2",
        "seed=1",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=base + overrides)
    summary = Trainer(to_run_config(cfg), folder).fit()
    return {key: summary[key] for key in (*NUMBERS, *MC_NUMBERS, "steps", "params")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    register()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES:
            results[name] = run_case(overrides, args.steps, Path(tmp) / name)
            print(name, json.dumps(results[name]), flush=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    worst, differing = 0.0, []
    for name, numbers in results.items():
        for key, value in numbers.items():
            old = before.get(name, {}).get(key)
            if old != value:
                differing.append(f"{name}.{key}: {old} -> {value}")
                if isinstance(old, float) and isinstance(value, float):
                    worst = max(worst, abs(value - old) / abs(old))
    count = sum(len(numbers) for numbers in results.values())
    print(
        f"{count - len(differing)}/{count} numbers identical; largest relative change {worst:.3g}"
    )
    for line in differing:
        print("  differs:", line)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
