"""The Performance page's tables (medcore.report.perf) on small size records: the headline ratios and the
precision table."""
from __future__ import annotations

from medcore.report import book as rp
from medcore.report import perf


def test_headline_ratios_and_precision_table(study_root):
    ratios = perf.headline_ratios(study_root).set_index("quantity")
    assert ratios.loc["weights in memory", "ratio"] == "2.50x smaller"
    assert ratios.loc["scoring latency, batch 1", "ratio"] == "4.00x slower"
    assert len(ratios.columns) <= rp.WIDE - 1
    table = perf.precision_table(perf.precision_rows(study_root / "results" / "scale-h200")).set_index("precision")
    assert table.loc["NF4", "training peak"] == rp.MISSING and table.loc["NF4+DQ", "in memory"] == rp.gb(2e9)
