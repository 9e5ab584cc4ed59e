"""Shown values (medcore.report.book): tables without an index that scroll when wide, markdown that reads back
unchanged."""
from __future__ import annotations

import pandas as pd

from medcore.report import book as rp


def test_table_html_has_no_index_and_scrolls_when_wide():
    df = pd.DataFrame({f"c{i}": [1.0, float("nan")] for i in range(9)})
    html = rp.table(df)._repr_html_()
    assert "medcore-wide" in html and "nan" not in html and rp.MISSING in html and "<th></th>" not in html
    assert "medcore-wide" not in rp.table(df.iloc[:, :3])._repr_html_()
    assert repr(rp.Markdown("4,183 questions")) == repr("4,183 questions")  # glue:text reads it back unchanged
