"""Each figure of medcore.report.plots_accuracy, drawn from a small synthetic frame: the expected artists and labels
are there."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection

from medcore.report import plots_accuracy
from tests.conftest import _bars, _legend_texts


def test_accuracy_by_group_has_bars_error_bars_and_chance_line():
    df = pd.DataFrame({
        "subject": ["Anatomy", "Anatomy", "Surgery", "Surgery", "Pharmacology"],
        "model": ["before", "after", "before", "after", "before"],
        "accuracy": [0.30, 0.45, 0.25, 0.40, 0.35],
        "ci_low": [0.20, 0.35, 0.15, 0.30, 0.25], "ci_high": [0.40, 0.55, 0.35, 0.50, 0.45],
        "n": [40, 40, 30, 30, 20]})
    fig = plots_accuracy.accuracy_by_group(df, group="subject")
    ax = fig.axes[0]
    widths = sorted(round(b.get_width(), 2) for b in _bars(ax) if b.get_width() > 0)
    assert widths == sorted([0.30, 0.45, 0.25, 0.40, 0.35])
    errorbars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(errorbars) == 5  # one per (group, model) present; the missing "after" bar gets none
    segments = np.concatenate([c.get_segments() for c in errorbars])
    assert {round(s[0][0], 2) for s in segments} == {0.20, 0.35, 0.15, 0.30, 0.25}
    assert ax.get_xlabel().startswith("accuracy")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Anatomy (n=40)", "Surgery (n=30)", "Pharmacology (n=20)"]
    assert {"before", "after", "chance"} <= set(_legend_texts(ax))


def test_reliability_diagram_has_diagonal_curves_and_ece():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1, 200)
    df = pd.DataFrame({"confidence": np.r_[conf, conf], "correct": np.r_[rng.uniform(size=200) < conf, rng.uniform(size=200) < 0.3],
                       "model": ["after"] * 200 + ["before"] * 200})
    fig = plots_accuracy.reliability_diagram(df)
    ax, hist = fig.axes
    labels = _legend_texts(ax)
    assert labels[0] == "perfect calibration"
    assert any(t.startswith("after (ECE") for t in labels) and any(t.startswith("before (ECE") for t in labels)
    assert len(ax.get_lines()) == 3
    assert len(hist.patches) == 2 * 10


def test_position_bias_shares_sum_to_one_per_model():
    df = pd.DataFrame({"prediction": [0, 0, 0, 1, 2, 3, 0, 0], "answer": [0, 1, 2, 3, 0, 1, 2, 3],
                       "model": ["before"] * 4 + ["after"] * 4})
    ax = plots_accuracy.position_bias(df).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C", "D"]
    assert {"answer key", "before", "after"} <= set(_legend_texts(ax))
    heights = [b.get_height() for b in _bars(ax)]
    assert len(heights) == 12
    assert np.isclose(sum(h for h in heights if np.isfinite(h)), 3.0)


def test_ablation_plot_rows_and_legend():
    df = pd.DataFrame({"setting": ["r=4", "r=16", "nf4", "fp4"], "ablation": ["lora.r", "lora.r", "quant", "quant"],
                       "accuracy": [0.3, 0.35, 0.33, 0.31], "ci_low": [0.25, 0.3, 0.28, 0.26],
                       "ci_high": [0.35, 0.4, 0.38, 0.36]})
    ax = plots_accuracy.ablation_plot(df).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r=4", "r=16", "nf4", "fp4"]
    assert {"lora.r", "quant", "chance (one letter in four)"} <= set(_legend_texts(ax))
    assert not any("most frequent" in t for t in _legend_texts(ax))  # the prior line only when asked for


def test_ablation_plot_draws_the_most_frequent_letter_line_beside_chance():
    df = pd.DataFrame({"model": ["zero-shot", "QLoRA"], "role": ["zero-shot", "fine-tuned"],
                       "accuracy": [0.28, 0.31], "ci_low": [0.27, 0.29], "ci_high": [0.30, 0.32]})
    ax = plots_accuracy.ablation_plot(df, setting="model", hue="role", prior=("A", 0.322)).axes[0]
    lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1}
    assert lines["chance (one letter in four)"] == pytest.approx(0.25)
    assert lines["always A (the key's most frequent letter)"] == pytest.approx(0.322)
    assert {"chance (one letter in four)", "always A (the key's most frequent letter)", "zero-shot",
            "fine-tuned"} <= set(_legend_texts(ax))
    assert ax.xaxis.get_major_formatter()(0.3, 0).endswith("%")


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="ci_low"):
        plots_accuracy.accuracy_by_group(pd.DataFrame({"group": ["a"], "accuracy": [0.5]}))


def test_results_overview_labels_random_runs():
    table = pd.DataFrame({"run": ["base", "tuned"], "weights": ["real", "random weights (accuracy meaningless)"],
                          "size_gb": [0.5, 0.52], "accuracy": [0.3, 0.4], "ci_low": [0.25, 0.35],
                          "ci_high": [0.35, 0.45], "latency_ms": [20.0, 22.0]})
    fig = plots_accuracy.results_overview(table)
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "base" and "random weights" in labels[1]
    assert fig.axes[0].get_xlabel() == "weights in memory (MB)"
    assert [round(b.get_width(), 2) for b in fig.axes[1].patches] == [0.3, 0.4]
