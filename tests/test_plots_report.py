"""The report pages' figures (medcore.report.plots_report) from small study records: the reference lines and
the letter bars."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from medcore.report import intro as ri
from medcore.report import plots_report as pr
from medcore.report import study as rs


def test_figures_draw_the_reference_lines(study_root):
    long, always = ri.headline_frame(study_root)
    fig = pr.headline_accuracy(long, prior=(always["letter"], always["accuracy"]))
    main = fig.axes[-1]  # circular accuracy has its own panel on the left
    xs = {round(line.get_xdata()[0], 6) for line in main.lines if len(set(line.get_xdata())) == 1}
    assert {0.25, round(always["accuracy"], 6)} <= xs and len(fig.axes) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(f"always {always['letter']}" in t for t in labels) and "permutation-debiased" in labels
    assert fig.get_figwidth() <= 7.5
    shares = rs.letter_shares(rs.load_study(study_root / "results" / "study"))
    bars = pr.letter_prior(shares).axes[0].patches
    assert len([b for b in bars if b.get_height() > 0]) <= 4 * shares["model"].nunique()
