"""``python -m rnnreg.train [group=option ...] [key=value ...]``: train a run
(the entry point lives in ``rnnreg/cli/train.py``)."""

from rnnreg.cli.train import cli

if __name__ == "__main__":
    cli()
