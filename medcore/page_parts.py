"""Small pieces every book-page generator uses: a saved figure, a note box, a table's numbers formatted.

They live apart from :mod:`medcore.pages` so that the generators it calls (``pages_bench``, ``pages_perf``,
``pages_product``) need not import it back."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def save_figure(fig, out: Path, name: str, alt: str) -> str:
    """Save `fig` as ``out/name`` and return the markdown image that shows it."""
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    return f"\n![{alt}]({name})\n"


def note(text: str) -> str:
    """A MyST note box."""
    return f"```{{note}}\n{text}\n```\n"


def format_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """Floats as text: thousands with separators, the rest to three significant digits."""
    return df.map(lambda v: f"{v:,.0f}" if isinstance(v, float) and abs(v) >= 1000 else
                  f"{v:.3g}" if isinstance(v, float) else v)
