"""``python -m rnnreg.rescore <run dir> [--grid] [key=value ...]``: cache pointer and dynamic
evaluation of a finished run (``rnnreg/cli/rescore.py``)."""

import sys

from rnnreg.cli.rescore import main

if __name__ == "__main__":
    sys.exit(main())
