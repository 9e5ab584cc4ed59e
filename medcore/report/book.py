"""Shown values for the report notebooks (the book's intro, Results, Performance and notes pages).

The report modules (:mod:`medcore.report.study`, :mod:`medcore.report.intro`, :mod:`medcore.report.perf`) return
DataFrames of numbers; these helpers turn them into what a reader sees: numbers in the reader's units (%, MB,
GB, ms), tables as HTML without an index and with "—" for a value a record does not have, kept inside the page's
column (a wide table scrolls in its own box), and values glued into the prose with myst-nb's ``glue``.
"""
from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from medcore.report.tables import markdown_table

MISSING = "—"
NBSP = "\u00a0"  # inside a value, so a table cell never breaks "30.6 %" or an interval across lines
WIDE = 7  # more columns than this scroll sideways inside their own box


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def pct(v: Any, digits: int = 1) -> str:
    """0.306 -> "30.6 %"; a rate below 1 % keeps two decimals (0.0005 -> "0.05 %"), so it does not read as zero."""
    if _missing(v):
        return MISSING
    digits = max(digits, 2) if 0 < abs(float(v)) < 0.01 else digits
    return f"{100 * float(v):.{digits}f}{NBSP}%"


def points(v: Any, digits: int = 1) -> str:
    """A difference of two rates in percentage points, signed: 0.021 -> "+2.1 points"; below a tenth of a point
    two decimals, so a small change does not read as "-0.0"."""
    if _missing(v):
        return MISSING
    digits = max(digits, 2) if 0 < abs(float(v)) < 0.001 else digits
    return f"{100 * float(v):+.{digits}f}{NBSP}points"


def pvalue(p: Any) -> str:
    """A p-value to two significant digits; one too small for a float reads "< 1e-300", never "0"."""
    return MISSING if _missing(p) else f"{p:.2g}" if p >= 1e-300 else "<\u00a01e-300"


def interval(acc: Any, low: Any, high: Any, digits: int = 1) -> str:
    """"30.6 % [29.2, 32.0]": a rate with its 95 % interval."""
    if _missing(acc):
        return MISSING
    if _missing(low) or _missing(high):
        return pct(acc, digits)
    return f"{100 * acc:.{digits}f}{NBSP}%{NBSP}[{100 * low:.{digits}f},{NBSP}{100 * high:.{digits}f}]"


def gb(nbytes: Any, digits: int = 2) -> str:
    return MISSING if _missing(nbytes) else f"{float(nbytes) / 1e9:.{digits}f}{NBSP}GB"


def mb(nbytes: Any) -> str:
    return MISSING if _missing(nbytes) else f"{float(nbytes) / 1e6:,.0f}{NBSP}MB"


def size(nbytes: Any) -> str:
    """Bytes in the unit that keeps three digits or fewer before the point: KB, MB or GB."""
    if _missing(nbytes):
        return MISSING
    v = float(nbytes)
    return gb(v) if v >= 1e9 else mb(v) if v >= 1e6 else f"{v / 1e3:,.0f}{NBSP}KB"


def ms(v: Any, digits: int = 1) -> str:
    return MISSING if _missing(v) else f"{float(v):,.{digits}f}{NBSP}ms"


def count(v: Any) -> str:
    return MISSING if _missing(v) else f"{float(v):,.0f}"


def ratio(v: Any, digits: int = 2) -> str:
    return MISSING if _missing(v) else f"{float(v):.{digits}f}x"


def number(v: Any) -> str:
    """A measured quantity without a unit: thousands with separators, smaller values to three digits."""
    if _missing(v):
        return MISSING
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


class Table:
    """A DataFrame shown as an HTML table without its index; :data:`WIDE` or fewer columns fit the column,
    more scroll sideways inside their own box. Cells are shown as given (format them first) except missing
    values, shown as :data:`MISSING`."""

    def __init__(self, df: pd.DataFrame, caption: str | None = None):
        self.df, self.caption = df, caption

    def _cells(self) -> pd.DataFrame:
        return self.df.astype(object).map(lambda v: MISSING if _missing(v) else v)

    def _repr_html_(self) -> str:
        body = self._cells().to_html(index=False, border=0, escape=True, justify="left",
                                     classes="table medcore-table")
        wide = " medcore-wide" if len(self.df.columns) > WIDE else ""
        caption = f'<p class="medcore-caption">{html.escape(self.caption)}</p>' if self.caption else ""
        return f'<div class="medcore-scroll{wide}">{caption}{body}</div>'

    def _repr_markdown_(self) -> str:
        return markdown_table(self._cells())

    def __repr__(self) -> str:  # a console or a text-only viewer
        return self._cells().to_string(index=False)


def table(df: pd.DataFrame, caption: str | None = None) -> Table:
    return Table(df, caption)


class Markdown:
    """Markdown text whose plain-text form is the quoted text (never ``<...Markdown object>``): myst-nb's
    ``{glue:text}`` reads a quoted string back unchanged, where "4,183" unquoted would read as a tuple."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return repr(self.text)


def note(text: str, kind: str = "note") -> Markdown:
    """A MyST admonition box (note, warning, tip) holding ``text``."""
    return Markdown(f":::{{{kind}}}\n{text}\n:::\n")


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Glue ``value`` under ``name`` for the page's prose (``{glue:text}`` / ``{glue:md}`` / ``{glue:figure}``);
    a string is glued as markdown, so ``{glue:md}`` renders its emphasis and ``{glue:text}`` its plain text."""
    from myst_nb import glue as _glue

    _glue(name, Markdown(value) if isinstance(value, str) else value, display=display)
    return value
