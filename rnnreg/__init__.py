"""rnnreg: the Penn Treebank comparisons of LSTM dropout variants, under one roof."""

import sys
from pathlib import Path

__version__ = "0.1.0"

#: The repository root (``conf/``, ``data/`` and ``outputs/`` live here).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RnnregError(Exception):
    """A user-facing error: its message is one line that says what to do.

    The entry points print ``rnnreg: error: <message>`` and exit with status 2
    instead of showing a traceback.
    """


class RunInUse(RnnregError):
    """Another live process is training the same run directory."""


def error_exit(message: object) -> int:
    """Print the one line ``rnnreg: error: <message>`` on stderr; return exit status 2."""
    print(f"rnnreg: error: {message}", file=sys.stderr)
    return 2
