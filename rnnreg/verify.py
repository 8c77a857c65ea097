"""``python -m rnnreg.verify``: see rnnreg/cli/verify.py."""

import sys

from rnnreg.cli.verify import main

if __name__ == "__main__":
    sys.exit(main())
