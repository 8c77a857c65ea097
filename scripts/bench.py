"""Tokens/s of the trainer's own training step, every variant against cuDNN/MKL ``none``.

    python scripts/bench.py                                   # small and medium, fp32
    python scripts/bench.py --models small medium large --paths auto loop \\
        --compile-modes default reduce-overhead --precisions fp32 tf32 bf16

The step timed is :meth:`rnnreg.training.trainer.Trainer._train_step` on a Trainer built from the
composed config (``variant=<v> model=<size>`` plus the options below): the loss of
``rnnreg.training.loss`` (× bptt, AR/TAR where the variant has them), the configured clip, the
finite-guarded SGD update, NT-ASGD bookkeeping: exactly what a run does per window. Tokens
are random ids over a 10,000-word vocabulary (speed does not depend on them).

Every configuration is built in one process and timed round-robin (``--steps`` windows
each, the order reversed every round), so the machine's drift between processes does not
enter the ratios; figures are medians over rounds. The ratio is to ``none`` on the fused
path at the same size and precision. Peak memory: ``torch.cuda.max_memory_allocated``
during a configuration's steps on a GPU; on a CPU the process's peak RSS during them
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``), which includes the
other configurations' weights held by the process.

``--markdown FILE`` also writes the table as Markdown (``make gpu-check`` does).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from rnnreg.config.schema import CONF_DIR, group_options, register, to_run_config
from rnnreg.core.malloc import tune_malloc
from rnnreg.core.opcount import OperatorCounts, count_operators
from rnnreg.core.precision import apply_precision
from rnnreg.data.corpus import Corpus
from rnnreg.training.trainer import Trainer

VOCAB = 10_000
STARTED = time.monotonic()
SHAPES = {"small": (20, 20), "medium": (20, 35), "large": (20, 35)}


@dataclass
class Case:
    """One configuration of the table and its measured rounds."""

    model: str
    variant: str
    path: str
    compile_mode: str
    precision: str
    block: int | None = None  # model.compile_block (None: the default, trainer.bptt)
    objective: str = "none"  # objective=fd|eld|pi: the two-pass step
    cell: str = "lstm"  # model.cell: lstm or gru (nn.GRU's none is the gru rows' baseline)
    trainer: Trainer | None = None
    windows: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    error: str = ""
    #: Operators per step (rnnreg/core/opcount.py) and inductor kernels generated per graph.
    ops: OperatorCounts | None = None
    kernels: int = 0

    @property
    def label(self) -> str:
        block = "" if self.block is None else f"/block{self.block}"
        objective = "" if self.objective == "none" else f"/{self.objective}"
        cell = "" if self.cell == "lstm" else f"/{self.cell}"
        return (
            f"{self.variant}/{self.path}/{self.compile_mode}/{self.precision}{block}{objective}"
            f"{cell}"
        )

    @property
    def name(self) -> str:
        """The variant, with its objective and cell: ``zaremba+fd``, ``gru:gal``; a GRU's
        zoneout runs on h only (``variant.zoneout_cell=0``: it has no cell)."""
        name = self.variant if self.objective == "none" else f"{self.variant}+{self.objective}"
        if self.cell == "lstm":
            return name
        return f"gru:{name}" + (" (zoneout_cell=0)" if self.variant == "zoneout" else "")


def corpus(rows: int, batch: int) -> Corpus:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, ((rows + 1) * batch,), generator=gen)
    return Corpus([f"w{i}" for i in range(VOCAB)], ids, ids[: 4 * batch], ids[: 4 * batch])


def overrides_for(case: Case, args: argparse.Namespace) -> list[str]:
    """Only the keys that differ from the defaults, so the script also runs on older code."""
    batch, bptt = SHAPES.get(case.model, (20, 35))
    extra = [f"model={case.model}", f"variant={case.variant}", f"trainer.device={args.device}"]
    extra += [f"trainer.batch_size={batch}", f"trainer.bptt={bptt}", "trainer.progress=log"]
    extra.append(f"model.compile={str(not args.eager).lower()}")
    if case.path != "auto":
        extra.append(f"model.lstm_impl={case.path}")
    if case.compile_mode != "default":
        extra.append(f"model.compile_mode={case.compile_mode}")
    if case.precision != "fp32":
        extra.append(f"trainer.precision={case.precision}")
    if case.block is not None:
        extra.append(f"model.compile_block={case.block}")
    if case.objective != "none":
        extra.append(f"objective={case.objective}")
    if case.cell != "lstm":
        extra.append(f"model.cell={case.cell}")
        if case.variant == "zoneout":
            extra.append("variant.zoneout_cell=0")  # a GRU has no cell (rnnreg/model/gru.py)
    return extra + list(args.override)


def build(case: Case, args: argparse.Namespace, folder: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=overrides_for(case, args)))
    batch, bptt = run.trainer.batch_size, run.trainer.bptt
    rows = (args.rounds * args.steps + args.warmup + 2) * bptt
    trainer = Trainer(run, folder / case.label.replace("/", "_"), corpus=corpus(rows, batch))
    trainer.model.train()
    trainer.state = trainer.model.init_state(batch)
    case.trainer = trainer
    data = trainer.train_data  # the windows cut once: the step, not the slicing, is timed
    case.windows = list(zip(data[:-1].split(bptt), data[1:].split(bptt), strict=True))[:-1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_steps(case: Case, steps: int, position: list[int]) -> float:
    """Seconds for ``steps`` trainer steps of this case's shape (device synchronised),
    under this case's precision: the backend flags are process-wide and every Trainer
    built sets them for the whole process, so they are set again before each timing."""
    trainer = case.trainer
    assert trainer is not None
    apply_precision(trainer.run.trainer.precision.value)
    synchronize(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        index = position[0] % len(case.windows)
        trainer._train_step(*case.windows[index])
        position[0] = index + 1
    synchronize(trainer.device)
    return time.perf_counter() - started


def bench_model(model: str, cases: list[Case], args: argparse.Namespace, folder: Path) -> str:
    batch, bptt = SHAPES.get(model, (20, 35))
    positions = {case.label: [0] for case in cases}
    live = []
    for case in cases:
        if args.time_budget and time.monotonic() - STARTED > args.time_budget:
            case.error = "not run: --time-budget spent"
            continue
        try:
            build(case, args, folder)
            started = time.perf_counter()
            kernels_before = generated_kernels()
            run_steps(case, args.warmup, positions[case.label])  # compiles, if it compiles
            case.kernels = generated_kernels() - kernels_before
            print(f"  built {model} {case.label} ({time.perf_counter() - started:.1f} s)")
            live.append(case)
        except Exception as exc:  # one configuration that cannot run is reported, not fatal
            case.error = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else "error"
            print(f"  {model} {case.label}: {case.error}")
    order = list(live)
    for round_index in range(args.rounds):
        if round_index and args.time_budget and time.monotonic() - STARTED > args.time_budget:
            break  # fewer rounds, every built configuration measured
        for case in order:
            assert case.trainer is not None
            reset_peak(case.trainer.device)
            seconds = run_steps(case, args.steps, positions[case.label])
            case.peak_mb = max(case.peak_mb, peak_mb(case.trainer.device))
            case.rates.append(args.steps * batch * bptt / seconds)
        order.reverse()
    for case in order if args.profile_steps else []:  # after the timing: it costs time
        position = positions[case.label]
        case.ops = count_operators(
            lambda c=case, p=position: run_steps(c, 1, p), args.profile_steps
        )
    return table(model, cases, args)


def generated_kernels() -> int:
    """Kernels inductor has generated in this process so far."""
    from torch._inductor import metrics

    return metrics.generated_kernel_count


def op_cells(case: Case) -> str:
    """host dispatches | compute operators (+ compiled-graph calls) | kernels per graph
    (| CUDA kernels), per step."""
    ops = case.ops
    if ops is None:
        return "– | – | –"
    assert case.trainer is not None
    graphs = case.trainer.model.compilations
    per_graph = f"{case.kernels / graphs:.1f} ({graphs})" if graphs else "–"
    if graphs and not case.kernels:  # compiled by an earlier case of the same configuration
        per_graph = f"shared ({graphs})"
    compute = f"{ops.per_step(ops.compute):.0f}"
    if ops.compiled_calls:
        compute += f" + {ops.per_step(ops.compiled_calls):.0f} graphs"
    cells = f"{ops.per_step(ops.dispatches):.0f} | {compute} | {per_graph}"
    if ops.cuda_kernels:
        cells += f" | {ops.per_step(ops.cuda_kernels):.0f}"
    return cells


def table(model: str, cases: list[Case], args: argparse.Namespace) -> str:
    batch, bptt = SHAPES.get(model, (20, 35))
    bases = {
        (case.precision, case.cell): statistics.median(case.rates)
        for case in cases
        if case.variant == "none"
        and case.path in ("auto", "fused")
        and case.rates
        and case.objective == "none"
    }
    device = next((c.trainer.device for c in cases if c.trainer is not None), None)
    where = "unknown" if device is None else device.type
    if device is not None and device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    memory = "max_memory_allocated MB" if where != "cpu" else "peak RSS MB"
    rounds = max((len(case.rates) for case in cases), default=0)
    lines = [
        f"model={model} (batch {batch}, bptt {bptt}) on {where}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, {rounds} rounds x {args.steps} steps",
        "",
        f"| variant | path | compile | precision | tokens/s | ratio to none | {memory} | spread "
        "| host dispatches/step | compute ops/step | kernels/graph (graphs) |"
        + (" CUDA kernels/step |" if where not in ("cpu", "unknown") else ""),
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|"
        + ("---:|" if where not in ("cpu", "unknown") else ""),
    ]
    for case in cases:
        if not case.rates:
            lines.append(
                f"| {case.name} | {case.path} | {case.compile_mode} | {case.precision} | "
                f"– | – | – | {case.error} | – | – | – |"
            )
            continue
        assert case.trainer is not None
        model_ = case.trainer.model
        # what actually ran: a loop that fell back to eager says so (rnnreg/model/recurrence.py)
        path = model_.lstm_path + (f"-{model_.loop_mode}" if model_.loop_mode else "")
        median = statistics.median(case.rates)
        base = bases.get((case.precision, case.cell))
        ratio = f"{median / base:.2f}" if base else "–"
        spread = f"{min(case.rates):.0f}-{max(case.rates):.0f}"
        if case.block is not None:
            path += f" (block {case.block})"
        lines.append(
            f"| {case.name} | {path} | {case.compile_mode} | {case.precision} | "
            f"{median:.0f} | {ratio} | {case.peak_mb:.0f} | {spread} | {op_cells(case)} |"
        )
    return "\n".join(lines)


def cases_for(model: str, args: argparse.Namespace) -> list[Case]:
    variants = args.variants or group_options("variant")
    args.variants_given = list(args.variants or [])
    if "none" not in variants:
        variants = ["none", *variants]
    cases = []
    # the first mode and precision for every variant first: a --time-budget cuts the rest
    for cell, mode, precision, path, variant in itertools.product(
        args.cells, args.compile_modes, args.precisions, args.paths, variants
    ):
        if cell == "gru" and variant == "moon":
            continue  # refused: it masks the LSTM's memory cell (rnnreg/model/gru.py)
        if mode != args.compile_modes[0] and path == "auto" and fused_variant(variant):
            continue  # the fused path compiles nothing: one row per precision
        if path == "fused" and not fused_variant(variant):
            continue
        loop = path in ("loop", "generic") or not fused_variant(variant)
        for block in args.compile_blocks if loop else [None]:
            for objective in args.objectives:
                if objective != "none" and variant == "none" and "none" not in args.variants_given:
                    continue  # the baseline stays one pass unless none was asked for
                cases.append(
                    Case(
                        model, variant, path, mode, precision, block, objective=objective, cell=cell
                    )
                )
    return cases


def fused_variant(variant: str) -> bool:
    """Whether the variant runs on the fused path under ``model.lstm_impl=auto`` (a plug-in
    rule never does: it runs on the generic path)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=[f"variant={variant}"]))
    from rnnreg.model.lm import in_step_dropout, plugin_rule

    return plugin_rule(run.variant) is None and not in_step_dropout(run.variant, 0).needs_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "medium"])
    parser.add_argument("--variants", nargs="+", default=None, help="default: every variant")
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["none"],
        help="none, fd, eld, pi: each variant also with the two-pass step (objective=...)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["auto"],
        help="auto (each variant's path), loop, fused, generic (autograd through the rule's hooks)",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        default=["lstm"],
        help="lstm, gru (model.cell): each cell's rows against its own fused none",
    )
    parser.add_argument("--compile-modes", nargs="+", default=["default"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument(
        "--compile-blocks",
        nargs="+",
        type=int,
        default=[None],
        help="model.compile_block values for the loop path (default: trainer.bptt)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=3,
        help="steps profiled per case for the operator columns (0: none)",
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="model.compile=false")
    parser.add_argument(
        "--time-budget", type=float, default=0, help="seconds; later configurations are skipped"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    args = parser.parse_args()
    register()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = []
    with tempfile.TemporaryDirectory(prefix="rnnreg-bench-") as folder:
        for model in args.models:
            text = bench_model(model, cases_for(model, args), args, Path(folder))
            print("\n" + text + "\n")
            sys.stdout.flush()
            tables.append(text)
            if args.markdown is not None:  # after each size: a time limit keeps the rest
                args.markdown.write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
