"""``python -m rnnreg.ledger record <run dir> | table``: the results ledger
(``rnnreg/reporting/ledger.py``)."""

import sys

from rnnreg.reporting.ledger import main

if __name__ == "__main__":
    sys.exit(main())
