"""What every report figure shares: the page column's width, the seaborn theme, the check that a frame has the
columns a figure draws, and closing a finished figure so that the caller, not pyplot, decides where it shows."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

LETTERS = ("A", "B", "C", "D")
CHANCE = 0.25  # four choices
COLUMN_WIDTH = 7.4  # inches: at 100 dpi about the book's main column, so text keeps its size on the page


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing} (has {list(df.columns)})")


def new_figure(width: float = COLUMN_WIDTH, height: float = 4.0, **kwargs) -> tuple[Figure, plt.Axes]:
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(width, height), **kwargs)
    return fig, ax


def finish(fig: Figure, title: str | None) -> Figure:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # the caller displays it; keeps pyplot from accumulating open figures
    return fig


def first_seen_order(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


def byte_unit(nbytes: float) -> str:
    return "GB" if nbytes >= 1e9 else "MB" if nbytes >= 1e6 else "KB"
