"""The numbered notebooks' figures of what a run measured on the way to its accuracy: the questions, the
weights' memory and quantization error, the training loss, and scoring and training speed.

Every function takes a tidy DataFrame whose columns are listed in its docstring and returns a
``matplotlib.figure.Figure`` (never shows it, never writes it): the notebooks display it, tests inspect
its artists. A ``title`` argument is passed through so a caller can say what produced the numbers, e.g.
"random weights: accuracy is meaningless" for a random-weight run. The accuracy figures are in
:mod:`medcore.report.plots_accuracy`.

Figures:

* :func:`length_hist` and :func:`count_bars` - prompt lengths and counts for the data notebook;
* :func:`footprint_bars` - memory by precision, stacked by module kind;
* :func:`quantization_error_plot` - per-layer quantization error by precision and module kind;
* :func:`loss_curves` - training and evaluation loss against the optimizer step;
* :func:`cost_bars` - latency and peak memory by precision or model;
* :func:`compare_bars` - one panel per measured quantity, one bar per setting (cost, benchmark recipes);
* :func:`budget_curves` - training speed and peak memory against the token budget, one line per recipe.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from medcore.report.figure import COLUMN_WIDTH, byte_unit, finish, first_seen_order, new_figure, require_columns


def length_hist(df: pd.DataFrame, column: str = "length", hue: str | None = "split", title: str | None = None,
                max_length: int | None = None) -> Figure:
    """Histogram of prompt lengths in tokens, optionally one colour per split.

    Columns: ``length`` (tokens; name set by ``column=``) and optional ``hue`` (default ``split``).
    ``max_length`` draws the truncation limit.
    """
    require_columns(df, [column], "length_hist")
    fig, ax = new_figure()
    sns.histplot(data=df, x=column, hue=hue if hue and hue in df.columns else None, element="step", ax=ax)
    if max_length:
        ax.axvline(max_length, color="red", linestyle="--", linewidth=1, label="max_length")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("questions")
    return finish(fig, title)



def count_bars(df: pd.DataFrame, category: str, hue: str | None = None, title: str | None = None,
               top: int | None = None) -> Figure:
    """Horizontal bars of question counts per ``category`` (e.g. subject), optionally split by ``hue``.

    Columns: ``category`` and ``count``, optional ``hue``; ``top`` keeps the largest categories.
    """
    require_columns(df, [category, "count"], "count_bars")
    totals = df.groupby(category, sort=False)["count"].sum().sort_values(ascending=False)
    order = totals.index.tolist()[:top] if top else totals.index.tolist()
    data = df[df[category].isin(order)]
    fig, ax = new_figure(7, max(2.5, 0.3 * len(order) + 1.2))
    sns.barplot(data=data, y=category, x="count", hue=hue if hue and hue in df.columns else None,
                order=order, orient="h", errorbar=None, ax=ax)
    ax.set_xlabel("questions")
    ax.set_ylabel(category)
    return finish(fig, title)



def footprint_bars(df: pd.DataFrame, title: str | None = None, unit: str = "auto") -> Figure:
    """Memory by precision, stacked by module kind, with the total on top of each bar.

    Columns: ``precision`` (e.g. "bf16", "int8", "nf4", "nf4+dq"), ``kind`` (e.g. "embedding", "attention",
    "mlp", "quant constants", "other"), ``bytes``. ``unit`` is "GB", "MB", "KB" (powers of 10) or "auto"
    (the largest that keeps the biggest bar at least 1).
    """
    require_columns(df, ["precision", "kind", "bytes"], "footprint_bars")
    if unit == "auto":
        unit = byte_unit(df.groupby("precision")["bytes"].sum().max())
    scale = {"GB": 1e9, "MB": 1e6, "KB": 1e3}[unit]
    table = df.pivot_table(index="precision", columns="kind", values="bytes", aggfunc="sum", sort=False).fillna(0)
    table = table.loc[first_seen_order(df["precision"]), first_seen_order(df["kind"])] / scale
    fig, ax = new_figure()
    colors = sns.color_palette(n_colors=len(table.columns))
    bottom = np.zeros(len(table))
    for color, kind in zip(colors, table.columns):
        ax.bar(table.index.astype(str), table[kind].to_numpy(), bottom=bottom, label=str(kind), color=color)
        bottom += table[kind].to_numpy()
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:.3g}", (x, total), ha="center", va="bottom", fontsize="small")
    ax.set_ylim(0, max(bottom.max(), 1e-12) * 1.15)
    ax.set_xlabel("precision")
    ax.set_ylabel(f"weights in memory ({unit})")
    ax.legend(title="module kind", fontsize="small", loc="upper right")
    return finish(fig, title)



def quantization_error_plot(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Per-layer quantization error, one point per layer, by module kind and precision.

    Columns: ``kind`` (module kind), ``precision``, ``error`` (e.g. relative Frobenius error of the
    dequantized weight); optional ``layer`` (the module name; not drawn).
    """
    require_columns(df, ["kind", "precision", "error"], "quantization_error_plot")
    fig, ax = new_figure()
    sns.stripplot(data=df, x="kind", y="error", hue="precision", dodge=True, jitter=0.2, size=4, ax=ax,
                  hue_order=first_seen_order(df["precision"]), order=first_seen_order(df["kind"]))
    ax.set_xlabel("module kind")
    ax.set_ylabel("relative weight error")
    ax.legend(title="precision", fontsize="small")
    return finish(fig, title)



def loss_curves(history: pd.DataFrame, title: str | None = None) -> Figure:
    """Training and evaluation loss against the optimizer step.

    ``history`` is either long, with columns ``step``, ``loss`` and ``split`` ("train" / "eval"), or the
    Trainer's wide log history with ``step`` and ``loss`` and/or ``eval_loss`` (rows without a value are
    dropped). One line per split, markers on evaluation points.
    """
    require_columns(history, ["step"], "loss_curves")
    if "split" in history.columns:
        require_columns(history, ["loss"], "loss_curves")
        long = history[["step", "loss", "split"]]
    else:
        parts = []
        for column, split in (("loss", "train"), ("eval_loss", "eval")):
            if column in history.columns:
                part = history[["step", column]].dropna().rename(columns={column: "loss"})
                parts.append(part.assign(split=split))
        if not parts:
            raise ValueError("loss_curves needs a 'loss' or 'eval_loss' column (or long format with 'split')")
        long = pd.concat(parts, ignore_index=True)
    long = long.dropna(subset=["loss"]).astype({"step": float, "loss": float})
    fig, ax = new_figure()
    sns.lineplot(data=long, x="step", y="loss", hue="split", style="split", markers=True, dashes=False,
                 hue_order=[s for s in ("train", "eval") if s in set(long["split"])] or None, ax=ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer token, nats)")
    return finish(fig, title)



def cost_bars(df: pd.DataFrame, by: str = "precision", title: str | None = None) -> Figure:
    """Latency and peak memory side by side, one bar per ``by`` level (a precision or a model).

    Columns: ``by`` (default ``precision``), ``latency_ms`` (per question, batch 1), ``peak_memory_mb``;
    optional ``latency_ci_low`` / ``latency_ci_high`` drawn as error bars.
    """
    require_columns(df, [by, "latency_ms", "peak_memory_mb"], "cost_bars")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.6))
    order = first_seen_order(df[by].astype(str))
    data = df.assign(**{by: df[by].astype(str)})
    sns.barplot(data=data, x=by, y="latency_ms", order=order, errorbar=None, ax=left, hue=by, legend=False)
    if {"latency_ci_low", "latency_ci_high"} <= set(df.columns):
        rows = data.set_index(by).loc[order]
        lat = rows["latency_ms"].to_numpy(float)
        left.errorbar(range(len(order)), lat, yerr=[lat - rows["latency_ci_low"].to_numpy(float),
                                                   rows["latency_ci_high"].to_numpy(float) - lat],
                      fmt="none", ecolor="black", capsize=3)
    sns.barplot(data=data, x=by, y="peak_memory_mb", order=order, errorbar=None, ax=right, hue=by, legend=False)
    left.set_ylabel("latency per question (ms)")
    right.set_ylabel("peak memory (MB)")
    for ax in (left, right):
        ax.set_xlabel(by)
    return finish(fig, title)



def compare_bars(df: pd.DataFrame, by: str, metrics: dict[str, str], title: str | None = None) -> Figure:
    """One panel per column of ``metrics`` (column -> axis label), one bar per ``by`` level, value on each bar;
    two panels per row, so the figure keeps the page column's width.

    Columns: ``by`` and every key of ``metrics``. Missing values leave the bar out.
    """
    require_columns(df, [by, *metrics], "compare_bars")
    sns.set_theme(style="whitegrid", context="notebook")
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 3.3 * nrows), squeeze=False)
    data = df.assign(**{by: df[by].astype(str)})
    order = first_seen_order(data[by])
    for ax, (column, label) in zip(axes.flat, metrics.items()):
        sns.barplot(data=data, x=by, y=column, order=order, errorbar=None, ax=ax, hue=by, legend=False)
        for container in ax.containers:
            ax.bar_label(container, labels=[f"{b.get_height():,.0f}" if b.get_height() >= 100 else
                                            f"{b.get_height():.3g}" for b in container], fontsize="small")
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.margins(y=0.15)
        ax.tick_params(axis="x", labelrotation=20 if max(len(o) for o in order) > 8 else 0)
    for ax in list(axes.flat)[len(metrics):]:
        fig.delaxes(ax)
    return finish(fig, title)



def budget_curves(df: pd.DataFrame, hue: str = "recipe", title: str | None = None) -> Figure:
    """Training real tokens/s and peak memory against tokens per batch (log2 axis), one line per ``hue`` level.

    Columns: token_budget, real_tokens_per_s, peak_memory_gb, ``hue``.
    """
    require_columns(df, ["token_budget", "real_tokens_per_s", "peak_memory_gb", hue], "budget_curves")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.6))
    data = df.sort_values("token_budget")
    for ax, (column, label) in zip(axes, (("real_tokens_per_s", "real tokens/s"),
                                          ("peak_memory_gb", "peak memory (GB)"))):
        sns.lineplot(data=data, x="token_budget", y=column, hue=hue, style=hue, markers=True, dashes=False,
                     errorbar=None, ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(data["token_budget"].unique()), [f"{int(v):,}" for v in sorted(data["token_budget"].unique())])
        ax.set_xlabel("tokens per batch")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper center", bbox_to_anchor=(-0.15, -0.25), title=None, frameon=False, ncol=2)
    return finish(fig, title)
