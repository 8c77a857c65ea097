"""``rnnreg verify variant=<name> [objective=fd|eld|pi] [model.cell=gru] [overrides]
[--no-resume]``: check a rule, and a two-pass objective with it, on LSTM or GRU layers
(docs/extending.md).

Prints one table (check, result, what was measured) and exits 1 when any check fails,
2 on bad input. The variant is composed as ``rnnreg train`` composes it, so its overrides
(``variant.p_hidden=0.2``) are checked the same way; the checks run at tiny sizes
(rnnreg/verification/checks.py, rnnreg/verification/runs.py). ``--no-resume`` skips the
SIGKILL-and-resume run (a few seconds of training).
"""

from __future__ import annotations

import sys
import time

from rnnreg import RnnregError, error_exit


def _compose(overrides: list[str]):  # noqa: ANN202 (a RunConfig; imports stay lazy)
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from rnnreg.cli.train import check_group_choices
    from rnnreg.config.schema import CONF_DIR, register, to_run_config

    register()
    check_group_choices(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as exc:
        raise RnnregError(str(exc).strip().splitlines()[0]) from exc
    return to_run_config(cfg)


def table(rows: list) -> str:
    """The checks as a Markdown table."""
    lines = ["| check | result | measured |", "|---|---|---|"]
    lines += [f"| {r.name} | {'pass' if r.ok else '**FAIL**'} | {r.detail} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    resume = "--no-resume" not in args
    overrides = [a for a in args if a != "--no-resume"]
    unknown = [a for a in overrides if a.startswith("-") or "=" not in a]
    if unknown or not any(a.startswith("variant=") for a in overrides):
        return error_exit(
            f"use: rnnreg verify variant=<name> [key=value ...] [--no-resume]"
            f"{' (not understood: ' + ' '.join(unknown) + ')' if unknown else ''}"
        )
    try:
        run = _compose(overrides)
        from rnnreg.verification.checks import all_checks
        from rnnreg.verification.objective import objective_checks
        from rnnreg.verification.runs import composition_check, resume_check

        started = time.monotonic()
        cell = run.model.cell
        rows = [*all_checks(run.variant, cell), composition_check(run.variant, cell=cell)]
        rows += objective_checks(run.variant, run.objective, cell)
        if resume:
            rows.append(resume_check(overrides))
    except RnnregError as exc:
        return error_exit(exc)
    failed = [r.name for r in rows if not r.ok]
    print(f"rnnreg verify {' '.join(overrides)}\n")
    print(table(rows))
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all checks passed"
    print(f"\n{verdict} ({len(rows)} checks, {time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
