"""Each figure of medcore.report.plots, drawn from a small synthetic frame: the expected artists and labels are there."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from medcore.report import plots
from tests.conftest import _bars, _legend_texts


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


def test_length_hist_and_count_bars():
    df = pd.DataFrame({"length": [50, 60, 70, 300, 55], "split": ["train", "train", "eval", "eval", "eval"]})
    ax = plots.length_hist(df, max_length=320).axes[0]
    assert ax.get_xlabel() == "prompt length (tokens)" and any(ln.get_xdata()[0] == 320 for ln in ax.get_lines())
    counts = pd.DataFrame({"subject": ["A", "B", "C"], "count": [5, 9, 1]})
    ax = plots.count_bars(counts, "subject", top=2).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B", "A"]


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
