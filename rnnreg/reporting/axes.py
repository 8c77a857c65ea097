"""What every perplexity figure's axes share (matplotlib is imported by the caller)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


def plain_log_ticks(axis: Any) -> None:
    """Label a log-scaled perplexity axis in plain numbers, major and minor ticks alike:
    160, not 1.6 × 10²."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:.0f}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi; its folder made) and close ``fig``; return ``path``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wrap_label(text: str, width: int = 40) -> str:
    """A label on lines of at most ``width`` characters (a group's settings can be long)."""
    return textwrap.fill(text, width, break_long_words=False)
