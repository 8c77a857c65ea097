"""Does MC dropout's mutual information tell a finished run's errors apart, once
confidence is held fixed? (docs/measurements.md, "Calibration of Zaremba and Gal dropout")

    python scripts/mi_by_confidence.py <run dir> [<run dir> ...] [--tokens 20000] [--samples 20]

For the first ``--tokens`` validation words at batch 20, ``--samples`` MC samples (masks
drawn per window, as ``eval.mc_mask_draw=window``): the mean MI = H[p̄] − E_k H[p_k] of the
errors and of the correct predictions, and the AUROC of MI for the errors within bins of
confidence max p̄ (rnnreg/evaluation/uncertainty.py has each formula).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rnnreg.cli.rescore import load_model
from rnnreg.data.batching import batchify
from rnnreg.evaluation.mc import evaluate_mc
from rnnreg.evaluation.uncertainty import UncertaintyMeter, auroc

CONFIDENCE_BINS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.01))


def per_token(run_dir: Path, tokens: int, samples: int, threads: int) -> dict[str, torch.Tensor]:
    """Confidence, correctness and MI of each of the first ``tokens`` validation words."""
    _, corpus, model = load_model(run_dir, [], threads)
    meter = UncertaintyMeter()
    torch.manual_seed(0)
    evaluate_mc(model, batchify(corpus.valid[: tokens + 1], 20), 35, samples, meter=meter)
    t = meter.tokens()
    return {"confidence": t["confidence"], "error": t["correct"] == 0, "mi": t["mi"]}


def describe(name: str, t: dict[str, torch.Tensor]) -> list[str]:
    err, mi, conf = t["error"], t["mi"], t["confidence"]
    lines = [
        f"{name}: {err.numel()} tokens, accuracy {1 - err.float().mean():.4f}",
        f"  mean MI: errors {mi[err].mean():.4f}, correct {mi[~err].mean():.4f}; "
        f"AUROC MI {auroc(mi, err):.3f}, 1 - max p {auroc(-conf, err):.3f}",
    ]
    for low, high in CONFIDENCE_BINS:
        inside = (conf >= low) & (conf < high)
        within = auroc(mi[inside], err[inside])
        lines.append(
            f"  confidence [{low}, {min(high, 1.0)}): {int(inside.sum())} tokens, accuracy "
            f"{1 - err[inside].float().mean():.3f}, mean MI {mi[inside].mean():.3f}, AUROC MI "
            f"{'–' if within is None else f'{within:.3f}'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for run_dir in args.runs:
        found = per_token(run_dir, args.tokens, args.samples, args.threads)
        print("\n".join(describe(run_dir.name, found)))


if __name__ == "__main__":
    main()
