"""MC-dropout evaluation with calibration: peak memory and time against K.

    python scripts/mc_memory.py [--samples 10 100 1000] [--windows 2] [--model medium]
        [--variant gal] [--mask-draw window|stream] [--batch 20]
    python scripts/mc_memory.py --variant awd --model awd --mask-draw stream \
        --samples 10 100 300 --batch 1          # held weight masks (eval.mc_mask_draw)

Each K runs in a fresh process: a randomly initialised, eager (``model.compile=false``)
``--model`` (PTB's vocabulary of 10,000) of ``--variant`` MC-evaluates ``--windows``
windows of 35 steps at batch ``--batch`` (the test split's is 1), its time-constant masks
drawn per window or held for the sample's whole stream (``--mask-draw``), with an
:class:`~rnnreg.evaluation.uncertainty.UncertaintyMeter`. It prints the extra peak RSS
over the process before the evaluation (glibc's mmap threshold fixed so that freed blocks
are returned; CUDA: ``max_memory_allocated``), the seconds per window, and the replicas
per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from hydra import compose, initialize_config_dir
from rnnreg.config.schema import CONF_DIR, register, to_run_config
from rnnreg.data.batching import batchify
from rnnreg.evaluation.mc import evaluate_mc, pass_size
from rnnreg.evaluation.uncertainty import UncertaintyMeter
from rnnreg.model.lm import LanguageModel

def rss_mb(field):
    line = [l for l in open("/proc/self/status") if l.startswith(field)][0]
    return int(line.split()[1]) / 1024

model_name, samples, windows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
variant, stream, batch = sys.argv[5], sys.argv[6] == "stream", int(sys.argv[7])
register()
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    overrides = [f"model={model_name}", f"variant={variant}", "model.compile=false"]
    run = to_run_config(compose("config", overrides))
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = LanguageModel(10_000, run.model, run.variant).to(device)
source = batchify(torch.randint(0, 10_000, (batch * (35 * windows + 1),)), batch).to(device)
base = rss_mb("VmRSS")
start = time.perf_counter()
evaluate_mc(model, source, 35, samples, hold_masks=stream, meter=UncertaintyMeter())
if device.type == "cuda":
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() / 2**20
else:
    extra = rss_mb("VmHWM") - base
print(json.dumps({"samples": samples, "extra_peak_mb": round(extra, 1),
                  "s_per_window": round((time.perf_counter() - start) / windows, 2),
                  "replicas_per_pass": pass_size(samples, 0, batch, 35, 10_000),
                  "model": model_name, "variant": variant, "mask_draw": sys.argv[6],
                  "device": str(device)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", default="gal")
    parser.add_argument("--mask-draw", choices=["window", "stream"], default="window")
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for samples in args.samples:
        argv = [args.model, str(samples), str(args.windows), str(args.threads)]
        argv += [args.variant, args.mask_draw, str(args.batch)]
        out = subprocess.run(
            [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        print(json.dumps(json.loads(out.stdout.strip().splitlines()[-1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
