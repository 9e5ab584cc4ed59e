"""Each figure of medcore.report.plots, drawn from a small synthetic frame: the expected artists and labels are there."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medcore.report import plots


def _bars(ax) -> list[Rectangle]:
    return [p for c in ax.containers for p in c if isinstance(p, Rectangle)]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_loss_curves_long_and_wide_formats():
    long = pd.DataFrame({"step": [1, 2, 3, 4, 2, 4], "loss": [2.0, 1.8, 1.5, 1.4, 1.9, 1.6],
                         "split": ["train"] * 4 + ["eval"] * 2})
    fig = plots.loss_curves(long, title="tiny")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) >= 2
    assert ax.get_xlabel() == "optimizer step" and "loss" in ax.get_ylabel()
    assert {"train", "eval"} <= set(_legend_texts(ax))
    assert fig._suptitle.get_text() == "tiny"

    wide = pd.DataFrame({"step": [1, 2, 2, 3], "loss": [2.0, 1.7, np.nan, 1.5], "eval_loss": [np.nan, np.nan, 1.8, np.nan]})
    ax = plots.loss_curves(wide).axes[0]
    train, = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    assert list(train.get_ydata()) == [2.0, 1.7, 1.5]
    with pytest.raises(ValueError, match="loss"):
        plots.loss_curves(pd.DataFrame({"step": [1]}))


def test_accuracy_by_group_has_bars_error_bars_and_chance_line():
    df = pd.DataFrame({
        "subject": ["Anatomy", "Anatomy", "Surgery", "Surgery", "Pharmacology"],
        "model": ["before", "after", "before", "after", "before"],
        "accuracy": [0.30, 0.45, 0.25, 0.40, 0.35],
        "ci_low": [0.20, 0.35, 0.15, 0.30, 0.25], "ci_high": [0.40, 0.55, 0.35, 0.50, 0.45],
        "n": [40, 40, 30, 30, 20]})
    fig = plots.accuracy_by_group(df, group="subject")
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


def test_footprint_bars_stack_kinds_and_label_totals():
    df = pd.DataFrame({"precision": ["bf16", "bf16", "nf4+dq", "nf4+dq", "nf4+dq"],
                       "kind": ["embedding", "linear", "embedding", "linear", "quant constants"],
                       "bytes": [1e9, 4e9, 1e9, 1e9, 0.05e9]})
    ax = plots.footprint_bars(df).axes[0]
    assert len(_bars(ax)) == 2 * 3  # precisions x kinds (zero-height where a kind is absent)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bf16", "nf4+dq"]
    assert sorted(t.get_text() for t in ax.texts) == ["2.05", "5"]
    assert set(_legend_texts(ax)) == {"embedding", "linear", "quant constants"}
    assert ax.get_ylabel().endswith("(GB)")


def test_quantization_error_and_cost_bars():
    errors = pd.DataFrame({"layer": [f"l{i}" for i in range(6)], "kind": ["attention", "mlp"] * 3,
                           "precision": ["int8"] * 3 + ["nf4"] * 3, "error": np.linspace(0.01, 0.1, 6)})
    ax = plots.quantization_error_plot(errors).axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 6
    cost = pd.DataFrame({"precision": ["bf16", "int8", "nf4"], "latency_ms": [10.0, 30.0, 20.0],
                         "peak_memory_mb": [500.0, 300.0, 200.0]})
    fig = plots.cost_bars(cost)
    assert len(fig.axes) == 2
    assert [round(b.get_height()) for b in _bars(fig.axes[0])] == [10, 30, 20]
    assert "latency" in fig.axes[0].get_ylabel() and "memory" in fig.axes[1].get_ylabel()


def test_reliability_diagram_has_diagonal_curves_and_ece():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1, 200)
    df = pd.DataFrame({"confidence": np.r_[conf, conf], "correct": np.r_[rng.uniform(size=200) < conf, rng.uniform(size=200) < 0.3],
                       "model": ["after"] * 200 + ["before"] * 200})
    fig = plots.reliability_diagram(df)
    ax, hist = fig.axes
    labels = _legend_texts(ax)
    assert labels[0] == "perfect calibration"
    assert any(t.startswith("after (ECE") for t in labels) and any(t.startswith("before (ECE") for t in labels)
    assert len(ax.get_lines()) == 3
    assert len(hist.patches) == 2 * 10


def test_position_bias_shares_sum_to_one_per_model():
    df = pd.DataFrame({"prediction": [0, 0, 0, 1, 2, 3, 0, 0], "answer": [0, 1, 2, 3, 0, 1, 2, 3],
                       "model": ["before"] * 4 + ["after"] * 4})
    ax = plots.position_bias(df).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C", "D"]
    assert {"answer key", "before", "after"} <= set(_legend_texts(ax))
    heights = [b.get_height() for b in _bars(ax)]
    assert len(heights) == 12
    assert np.isclose(sum(h for h in heights if np.isfinite(h)), 3.0)


def test_ablation_plot_rows_and_legend():
    df = pd.DataFrame({"setting": ["r=4", "r=16", "nf4", "fp4"], "ablation": ["lora.r", "lora.r", "quant", "quant"],
                       "accuracy": [0.3, 0.35, 0.33, 0.31], "ci_low": [0.25, 0.3, 0.28, 0.26],
                       "ci_high": [0.35, 0.4, 0.38, 0.36]})
    ax = plots.ablation_plot(df).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["r=4", "r=16", "nf4", "fp4"]
    assert {"lora.r", "quant", "chance (one letter in four)"} <= set(_legend_texts(ax))
    assert not any("most frequent" in t for t in _legend_texts(ax))  # the prior line only when asked for


def test_ablation_plot_draws_the_most_frequent_letter_line_beside_chance():
    df = pd.DataFrame({"model": ["zero-shot", "QLoRA"], "role": ["zero-shot", "fine-tuned"],
                       "accuracy": [0.28, 0.31], "ci_low": [0.27, 0.29], "ci_high": [0.30, 0.32]})
    ax = plots.ablation_plot(df, setting="model", hue="role", prior=("A", 0.322)).axes[0]
    lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1}
    assert lines["chance (one letter in four)"] == pytest.approx(0.25)
    assert lines["always A (the key's most frequent letter)"] == pytest.approx(0.322)
    assert {"chance (one letter in four)", "always A (the key's most frequent letter)", "zero-shot",
            "fine-tuned"} <= set(_legend_texts(ax))
    assert ax.xaxis.get_major_formatter()(0.3, 0).endswith("%")


def test_length_hist_and_count_bars():
    df = pd.DataFrame({"length": [50, 60, 70, 300, 55], "split": ["train", "train", "eval", "eval", "eval"]})
    ax = plots.length_hist(df, max_length=320).axes[0]
    assert ax.get_xlabel() == "prompt length (tokens)" and any(ln.get_xdata()[0] == 320 for ln in ax.get_lines())
    counts = pd.DataFrame({"subject": ["A", "B", "C"], "count": [5, 9, 1]})
    ax = plots.count_bars(counts, "subject", top=2).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B", "A"]


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="ci_low"):
        plots.accuracy_by_group(pd.DataFrame({"group": ["a"], "accuracy": [0.5]}))


def test_results_overview_labels_random_runs():
    table = pd.DataFrame({"run": ["base", "tuned"], "weights": ["real", "random weights (accuracy meaningless)"],
                          "size_gb": [0.5, 0.52], "accuracy": [0.3, 0.4], "ci_low": [0.25, 0.35],
                          "ci_high": [0.35, 0.45], "latency_ms": [20.0, 22.0]})
    fig = plots.results_overview(table)
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "base" and "random weights" in labels[1]
    assert fig.axes[0].get_xlabel() == "weights in memory (MB)"
    assert [round(b.get_width(), 2) for b in fig.axes[1].patches] == [0.3, 0.4]


def test_compare_bars_one_panel_per_quantity_with_values():
    df = pd.DataFrame({"precision": ["bf16", "nf4+dq"], "latency_ms": [93.7, 35.9], "qps": [1337.0, 1658.0],
                       "peak_memory_mb": [797.0, 648.0]})
    fig = plots.compare_bars(df, by="precision", metrics={"latency_ms": "latency (ms)", "qps": "questions/s",
                                                           "peak_memory_mb": "peak memory (MB)"}, title="cost")
    assert [ax.get_ylabel() for ax in fig.axes] == ["latency (ms)", "questions/s", "peak memory (MB)"]
    assert [round(b.get_height(), 1) for b in _bars(fig.axes[1])] == [1337.0, 1658.0]
    assert [t.get_text() for t in fig.axes[1].texts] == ["1,337", "1,658"]  # the value on each bar
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["bf16", "nf4+dq"]
    with pytest.raises(ValueError, match="qps"):
        plots.compare_bars(df.drop(columns="qps"), by="precision", metrics={"qps": "questions/s"})


def test_budget_curves_one_line_per_recipe_on_a_log2_axis():
    df = pd.DataFrame({"token_budget": [4096, 8192, 16384, 16384, 4096],
                       "real_tokens_per_s": [11e3, 17e3, 22e3, 29e3, 8e3], "peak_memory_gb": [3.7, 5.1, 7.9, 9.0, 3.7],
                       "recipe": ["eager", "eager", "eager", "compiled", "compiled"]})
    fig = plots.budget_curves(df, title="t")
    speed, memory = fig.axes[:2]
    assert speed.get_xscale() == "log" and speed.get_ylabel() == "real tokens/s"
    assert len(speed.lines) >= 2 and {t.get_text() for t in memory.get_legend().get_texts()} >= {"eager", "compiled"}
    ys = sorted(max(line.get_ydata()) for line in speed.lines if len(line.get_ydata()))
    assert ys[-1] == 29e3 and speed.get_legend() is None  # one legend, beside the memory panel
    with pytest.raises(ValueError, match="peak_memory_gb"):
        plots.budget_curves(df.drop(columns="peak_memory_gb"))
