"""The ``rnnreg`` console script: one command for every entry point.

rnnreg train [group=option ...] [key=value ...]     (python -m rnnreg.train)
rnnreg report [--outputs DIR] ...                    (python -m rnnreg.report)
rnnreg rescore <run dir> [--grid] [key=value ...]    (python -m rnnreg.rescore)
rnnreg ledger record <run dir> | table               (python -m rnnreg.ledger)
rnnreg tune [tune.key=value ...] [run overrides ...] (python -m rnnreg.tune)
rnnreg verify variant=<name> [key=value ...]         (python -m rnnreg.verify)
"""

from __future__ import annotations

import sys

from rnnreg import error_exit

COMMANDS = ("train", "report", "rescore", "ledger", "tune", "verify")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not args or args[0] not in COMMANDS:
        given = f"unknown command {args[0]!r}; " if args else ""
        return error_exit(f"{given}use: rnnreg {{{','.join(COMMANDS)}}} ... (rnnreg --help)")
    command, rest = args[0], args[1:]
    if command == "train":  # Hydra reads sys.argv itself
        from rnnreg.cli.train import cli

        sys.argv = [f"{sys.argv[0]} train", *rest]
        cli()
        return 0
    if command == "tune":  # a Hydra app as well
        from rnnreg.cli.tune import main as tune

        sys.argv = [f"{sys.argv[0]} tune", *rest]
        return tune()
    if command == "report":
        from rnnreg.reporting.report import main as entry
    elif command == "verify":
        from rnnreg.cli.verify import main as entry
    elif command == "rescore":
        from rnnreg.cli.rescore import main as entry
    else:
        from rnnreg.reporting.ledger import main as entry
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
