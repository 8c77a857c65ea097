"""``python -m rnnreg.report``: the perplexity report (``rnnreg/reporting/report.py``)."""

import sys

from rnnreg.reporting.report import main

if __name__ == "__main__":
    sys.exit(main())
