"""The seaborn figures that the notebooks and the book show.

Every function takes a tidy DataFrame whose columns are listed in its docstring and returns a
``matplotlib.figure.Figure`` (never shows it, never writes it): the notebooks display it, tests inspect
its artists. A ``title`` argument is passed through so a caller can say what produced the numbers, e.g.
"random weights: accuracy is meaningless" for a random-weight run.

Figures:

* :func:`loss_curves` - training and evaluation loss against the optimizer step;
* :func:`accuracy_by_group` - accuracy with confidence-interval error bars by subject / tier / choice type,
  one bar per model (e.g. before and after fine-tuning);
* :func:`footprint_bars` - memory by precision, stacked by module kind;
* :func:`quantization_error_plot` - per-layer quantization error by precision and module kind;
* :func:`cost_bars` - latency and peak memory by precision or model;
* :func:`compare_bars` - one panel per measured quantity, one bar per setting (cost, benchmark recipes);
* :func:`budget_curves` - training speed and peak memory against the token budget, one line per recipe;
* :func:`reliability_diagram` - calibration of the chosen letter's probability;
* :func:`position_bias` - how often each letter is predicted, against how often it is the answer;
* :func:`ablation_plot` - accuracy with intervals for each ablation setting;
* :func:`length_hist` and :func:`count_bars` - prompt lengths and counts for the data notebook;
* :func:`results_overview` - size, accuracy and latency of every evaluated run (the results table as a figure).
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

LETTERS = ("A", "B", "C", "D")
CHANCE = 0.25  # four choices
COLUMN_WIDTH = 7.4  # inches: at 100 dpi about the book's main column, so text keeps its size on the page


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing} (has {list(df.columns)})")


def _figure(width: float = COLUMN_WIDTH, height: float = 4.0, **kwargs) -> tuple[Figure, plt.Axes]:
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(width, height), **kwargs)
    return fig, ax


def _finish(fig: Figure, title: str | None) -> Figure:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # the caller displays it; keeps pyplot from accumulating open figures
    return fig


def _order(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


def loss_curves(history: pd.DataFrame, title: str | None = None) -> Figure:
    """Training and evaluation loss against the optimizer step.

    ``history`` is either long, with columns ``step``, ``loss`` and ``split`` ("train" / "eval"), or the
    Trainer's wide log history with ``step`` and ``loss`` and/or ``eval_loss`` (rows without a value are
    dropped). One line per split, markers on evaluation points.
    """
    _require(history, ["step"], "loss_curves")
    if "split" in history.columns:
        _require(history, ["loss"], "loss_curves")
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
    fig, ax = _figure()
    sns.lineplot(data=long, x="step", y="loss", hue="split", style="split", markers=True, dashes=False,
                 hue_order=[s for s in ("train", "eval") if s in set(long["split"])] or None, ax=ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer token, nats)")
    return _finish(fig, title)


def accuracy_by_group(df: pd.DataFrame, group: str = "group", hue: str = "model", title: str | None = None,
                      chance: float | None = CHANCE) -> Figure:
    """Accuracy per group with confidence-interval error bars, one bar per ``hue`` level.

    Columns: ``group`` (e.g. subject, tier or choice type; name set by ``group=``), ``hue`` (e.g. "before" /
    "after"; name set by ``hue=``), ``accuracy``, ``ci_low``, ``ci_high`` (all in [0, 1]); optional ``n``,
    shown in the group labels when present. A dashed line marks chance (one in four).
    """
    _require(df, [group, "accuracy", "ci_low", "ci_high"], "accuracy_by_group")
    data = df.copy()
    if hue not in data.columns:
        data[hue] = "model"
    groups = _order(data[group].astype(str))
    hues = _order(data[hue].astype(str))
    data[group] = data[group].astype(str)
    data[hue] = data[hue].astype(str)
    fig, ax = _figure(height=max(2.5, 0.45 * len(groups) * max(1, len(hues)) ** 0.5 + 1.2))
    sns.barplot(data=data, y=group, x="accuracy", hue=hue, order=groups, hue_order=hues, errorbar=None,
                orient="h", ax=ax)
    lookup = data.set_index([group, hue])
    for container, level in zip(ax.containers, hues):
        for bar in container:
            if not np.isfinite(bar.get_width()) or bar.get_height() == 0:
                continue
            centre = bar.get_y() + bar.get_height() / 2
            name = groups[int(round(centre))]
            if (name, level) not in lookup.index:
                continue
            row = lookup.loc[(name, level)]
            row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
            acc = float(row["accuracy"])
            err = [[max(acc - float(row["ci_low"]), 0.0)], [max(float(row["ci_high"]) - acc, 0.0)]]
            ax.errorbar(acc, centre, xerr=err, fmt="none", ecolor="black", elinewidth=1, capsize=3)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    if "n" in data.columns:
        counts = data.groupby(group, sort=False)["n"].max()
        ax.set_yticks(range(len(groups)), [f"{g} (n={int(counts[g])})" for g in groups])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% interval)")
    ax.set_ylabel(group)
    ax.legend(loc="lower right", fontsize="small")
    return _finish(fig, title)


def _unit(nbytes: float) -> str:
    return "GB" if nbytes >= 1e9 else "MB" if nbytes >= 1e6 else "KB"


def footprint_bars(df: pd.DataFrame, title: str | None = None, unit: str = "auto") -> Figure:
    """Memory by precision, stacked by module kind, with the total on top of each bar.

    Columns: ``precision`` (e.g. "bf16", "int8", "nf4", "nf4+dq"), ``kind`` (e.g. "embedding", "attention",
    "mlp", "quant constants", "other"), ``bytes``. ``unit`` is "GB", "MB", "KB" (powers of 10) or "auto"
    (the largest that keeps the biggest bar at least 1).
    """
    _require(df, ["precision", "kind", "bytes"], "footprint_bars")
    if unit == "auto":
        unit = _unit(df.groupby("precision")["bytes"].sum().max())
    scale = {"GB": 1e9, "MB": 1e6, "KB": 1e3}[unit]
    table = df.pivot_table(index="precision", columns="kind", values="bytes", aggfunc="sum", sort=False).fillna(0)
    table = table.loc[_order(df["precision"]), _order(df["kind"])] / scale
    fig, ax = _figure()
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
    return _finish(fig, title)


def quantization_error_plot(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Per-layer quantization error, one point per layer, by module kind and precision.

    Columns: ``kind`` (module kind), ``precision``, ``error`` (e.g. relative Frobenius error of the
    dequantized weight); optional ``layer`` (the module name; not drawn).
    """
    _require(df, ["kind", "precision", "error"], "quantization_error_plot")
    fig, ax = _figure()
    sns.stripplot(data=df, x="kind", y="error", hue="precision", dodge=True, jitter=0.2, size=4, ax=ax,
                  hue_order=_order(df["precision"]), order=_order(df["kind"]))
    ax.set_xlabel("module kind")
    ax.set_ylabel("relative weight error")
    ax.legend(title="precision", fontsize="small")
    return _finish(fig, title)


def cost_bars(df: pd.DataFrame, by: str = "precision", title: str | None = None) -> Figure:
    """Latency and peak memory side by side, one bar per ``by`` level (a precision or a model).

    Columns: ``by`` (default ``precision``), ``latency_ms`` (per question, batch 1), ``peak_memory_mb``;
    optional ``latency_ci_low`` / ``latency_ci_high`` drawn as error bars.
    """
    _require(df, [by, "latency_ms", "peak_memory_mb"], "cost_bars")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.6))
    order = _order(df[by].astype(str))
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
    return _finish(fig, title)


def compare_bars(df: pd.DataFrame, by: str, metrics: dict[str, str], title: str | None = None) -> Figure:
    """One panel per column of ``metrics`` (column -> axis label), one bar per ``by`` level, value on each bar;
    two panels per row, so the figure keeps the page column's width.

    Columns: ``by`` and every key of ``metrics``. Missing values leave the bar out.
    """
    _require(df, [by, *metrics], "compare_bars")
    sns.set_theme(style="whitegrid", context="notebook")
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 3.3 * nrows), squeeze=False)
    data = df.assign(**{by: df[by].astype(str)})
    order = _order(data[by])
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
    return _finish(fig, title)


def budget_curves(df: pd.DataFrame, hue: str = "recipe", title: str | None = None) -> Figure:
    """Training real tokens/s and peak memory against tokens per batch (log2 axis), one line per ``hue`` level.

    Columns: token_budget, real_tokens_per_s, peak_memory_gb, ``hue``.
    """
    _require(df, ["token_budget", "real_tokens_per_s", "peak_memory_gb", hue], "budget_curves")
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
    return _finish(fig, title)


def reliability_diagram(df: pd.DataFrame, hue: str = "model", n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability diagram: accuracy against confidence in equal-width bins, with a count histogram below.

    Columns: ``confidence`` (probability of the chosen letter, normalized over A-D), ``correct`` (bool);
    optional ``hue`` column (default ``model``) for one curve per model. The legend gives each curve's ECE.
    """
    from medcore.stats import expected_calibration_error, reliability_curve

    _require(df, ["confidence", "correct"], "reliability_diagram")
    data = df.copy()
    if hue not in data.columns:
        data[hue] = "model"
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    colors = sns.color_palette(n_colors=data[hue].nunique())
    for color, (name, part) in zip(colors, data.groupby(hue, sort=False)):
        curve = reliability_curve(part["confidence"], part["correct"].astype(bool), n_bins=n_bins)
        ece = expected_calibration_error(part["confidence"], part["correct"].astype(bool), n_bins=n_bins)
        ax.plot(curve["confidence"], curve["accuracy"], marker="o", color=color, label=f"{name} (ECE {ece:.3f})")
        hist.hist(part["confidence"], bins=np.linspace(0, 1, n_bins + 1), alpha=0.5, color=color, label=str(name))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.legend(fontsize="small", loc="upper left")
    hist.set_xlabel("confidence (probability of the chosen letter)")
    hist.set_ylabel("questions")
    return _finish(fig, title)


def _letter(values: pd.Series) -> pd.Series:
    return values.map(lambda v: LETTERS[int(v)] if not isinstance(v, str) else v)


def position_bias(df: pd.DataFrame, hue: str = "model", title: str | None = None) -> Figure:
    """Share of predictions per answer letter, next to the share of questions whose answer is that letter.

    Columns: ``prediction`` and ``answer`` (0-3 or "A"-"D"); optional ``hue`` column (default ``model``).
    A model without position bias follows the "answer key" bars.
    """
    _require(df, ["prediction", "answer"], "position_bias")
    data = df.copy()
    if hue not in data.columns:
        data[hue] = "model"
    parts = []
    key = _letter(data.drop_duplicates(subset=[c for c in ("id",) if c in data.columns] or None)["answer"])
    parts.append(pd.DataFrame({"letter": key, hue: "answer key"}))
    parts.append(pd.DataFrame({"letter": _letter(data["prediction"]), hue: data[hue].astype(str)}))
    long = pd.concat(parts, ignore_index=True)
    share = (pd.crosstab(long[hue], long["letter"], normalize="index")
             .reindex(columns=list(LETTERS), fill_value=0.0)  # a letter never predicted is a zero bar
             .stack().rename("share").reset_index())
    fig, ax = _figure(6.5, 3.8)
    sns.barplot(data=share, x="letter", y="share", hue=hue, order=list(LETTERS), hue_order=_order(long[hue]), ax=ax)
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("answer letter")
    ax.set_ylabel("share of questions")
    ax.legend(fontsize="small")
    return _finish(fig, title)


def ablation_plot(df: pd.DataFrame, setting: str = "setting", hue: str | None = "ablation",
                  title: str | None = None, chance: float | None = CHANCE,
                  prior: tuple[str, float] | None = None) -> Figure:
    """Accuracy with its interval for each ablation setting, one row per setting.

    Columns: ``setting`` (a label, e.g. "r=8"), ``accuracy``, ``ci_low``, ``ci_high``; optional ``hue``
    column (default ``ablation``, e.g. "lora.r") that colours settings of one family alike. ``prior`` (letter,
    accuracy) adds the line of always answering the key's most frequent letter beside the chance line: a model
    left of it has not beaten the letter prior.
    """
    _require(df, [setting, "accuracy", "ci_low", "ci_high"], "ablation_plot")
    data = df.reset_index(drop=True)
    fig, ax = _figure(7, max(2.5, 0.45 * len(data) + 1.2) + 0.8)
    families = _order(data[hue].astype(str)) if hue and hue in data.columns else [None]
    colors = dict(zip(families, sns.color_palette(n_colors=len(families))))
    for i, row in data.iterrows():
        family = str(row[hue]) if hue and hue in data.columns else None
        acc = float(row["accuracy"])
        ax.errorbar(acc, i, xerr=[[max(acc - row["ci_low"], 0)], [max(row["ci_high"] - acc, 0)]], fmt="o",
                    color=colors[family], capsize=3,
                    label=family if family is not None and family not in ax.get_legend_handles_labels()[1] else None)
    ax.set_yticks(range(len(data)), data[setting].astype(str).tolist())
    ax.invert_yaxis()
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance (one letter in four)")
    if prior is not None:
        ax.axvline(prior[1], color="firebrick", linestyle=":", linewidth=1.5,
                   label=f"always {prior[0]} (the key's most frequent letter)")
    ax.set_xlabel("accuracy (95% interval)")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("")
    # below the axes, so the plot keeps the column's width for the intervals
    below = 0.7 / max(fig.get_figheight() - 1.6, 0.8)  # clear of the tick labels and the x label (axes fraction)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -below), ncol=2, frameon=False)
    return _finish(fig, title)


def length_hist(df: pd.DataFrame, column: str = "length", hue: str | None = "split", title: str | None = None,
                max_length: int | None = None) -> Figure:
    """Histogram of prompt lengths in tokens, optionally one colour per split.

    Columns: ``length`` (tokens; name set by ``column=``) and optional ``hue`` (default ``split``).
    ``max_length`` draws the truncation limit.
    """
    _require(df, [column], "length_hist")
    fig, ax = _figure()
    sns.histplot(data=df, x=column, hue=hue if hue and hue in df.columns else None, element="step", ax=ax)
    if max_length:
        ax.axvline(max_length, color="red", linestyle="--", linewidth=1, label="max_length")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("questions")
    return _finish(fig, title)


def count_bars(df: pd.DataFrame, category: str, hue: str | None = None, title: str | None = None,
               top: int | None = None) -> Figure:
    """Horizontal bars of question counts per ``category`` (e.g. subject), optionally split by ``hue``.

    Columns: ``category`` and ``count``, optional ``hue``; ``top`` keeps the largest categories.
    """
    _require(df, [category, "count"], "count_bars")
    totals = df.groupby(category, sort=False)["count"].sum().sort_values(ascending=False)
    order = totals.index.tolist()[:top] if top else totals.index.tolist()
    data = df[df[category].isin(order)]
    fig, ax = _figure(7, max(2.5, 0.3 * len(order) + 1.2))
    sns.barplot(data=data, y=category, x="count", hue=hue if hue and hue in df.columns else None,
                order=order, orient="h", errorbar=None, ax=ax)
    ax.set_xlabel("questions")
    ax.set_ylabel(category)
    return _finish(fig, title)


def results_overview(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Size, accuracy (with interval) and batch-1 latency of every evaluated run, side by side.

    Columns (``records.results_table``): ``run``, ``weights``, ``size_gb``, ``accuracy``, ``ci_low``,
    ``ci_high``, ``latency_ms``. Runs whose ``weights`` is not "real" are labelled in the run names.
    """
    _require(table, ["run", "weights", "size_gb", "accuracy", "ci_low", "ci_high", "latency_ms"], "results_overview")
    labels = [r if w == "real" else f"{r}\n({w})" for r, w in zip(table["run"], table["weights"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (size, acc, lat) = plt.subplots(1, 3, figsize=(COLUMN_WIDTH, 0.5 * len(table) + 2), sharey=True)
    y = np.arange(len(table))
    colors = sns.color_palette(n_colors=len(table))
    unit = _unit(np.nanmax(table["size_gb"].to_numpy(float) * 1e9)) if table["size_gb"].notna().any() else "GB"
    scale = {"GB": 1, "MB": 1e3, "KB": 1e6}[unit]
    size.barh(y, table["size_gb"].to_numpy(float) * scale, color=colors)
    size.set_xlabel(f"weights in memory ({unit})")
    a = table["accuracy"].to_numpy(float)
    acc.barh(y, a, color=colors)
    acc.errorbar(a, y, xerr=[a - table["ci_low"].to_numpy(float), table["ci_high"].to_numpy(float) - a],
                 fmt="none", ecolor="black", capsize=3)
    acc.axvline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance")
    acc.set_xlim(0, 1)
    acc.set_xlabel("accuracy (95% interval)")
    acc.legend(fontsize="small", loc="lower right")
    lat.barh(y, table["latency_ms"].to_numpy(float), color=colors)
    lat.set_xlabel("latency per question, batch 1 (ms)")
    size.set_yticks(y, labels)
    size.invert_yaxis()
    return _finish(fig, title)
