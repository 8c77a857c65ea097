"""``python -m rnnreg.tune``: equal-budget studies (rnnreg/cli/tune.py)."""

import sys

from rnnreg.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
