"""The numbered notebooks' accuracy figures: how well a model answers, by group, by confidence, by letter and
by setting.

Every function takes a tidy DataFrame whose columns are listed in its docstring and returns a
``matplotlib.figure.Figure`` (never shows it, never writes it), as :mod:`medcore.report.plots` does; a ``title``
argument says what produced the numbers (e.g. random weights).

Figures:

* :func:`accuracy_by_group` - accuracy with confidence-interval error bars by subject / tier / choice type,
  one bar per model (e.g. before and after fine-tuning);
* :func:`reliability_diagram` - calibration of the chosen letter's probability;
* :func:`position_bias` - how often each letter is predicted, against how often it is the answer;
* :func:`ablation_plot` - accuracy with intervals for each ablation setting;
* :func:`results_overview` - size, accuracy and latency of every evaluated run (the results table as a figure).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from medcore.report.figure import (CHANCE, COLUMN_WIDTH, LETTERS, byte_unit, finish, first_seen_order, new_figure,
                                   require_columns)
from medcore.stats import expected_calibration_error, reliability_curve


def accuracy_by_group(df: pd.DataFrame, group: str = "group", hue: str = "model", title: str | None = None,
                      chance: float | None = CHANCE) -> Figure:
    """Accuracy per group with confidence-interval error bars, one bar per ``hue`` level.

    Columns: ``group`` (e.g. subject, tier or choice type; name set by ``group=``), ``hue`` (e.g. "before" /
    "after"; name set by ``hue=``), ``accuracy``, ``ci_low``, ``ci_high`` (all in [0, 1]); optional ``n``,
    shown in the group labels when present. A dashed line marks chance (one in four).
    """
    require_columns(df, [group, "accuracy", "ci_low", "ci_high"], "accuracy_by_group")
    data = df.copy()
    if hue not in data.columns:
        data[hue] = "model"
    groups = first_seen_order(data[group].astype(str))
    hues = first_seen_order(data[hue].astype(str))
    data[group] = data[group].astype(str)
    data[hue] = data[hue].astype(str)
    fig, ax = new_figure(height=max(2.5, 0.45 * len(groups) * max(1, len(hues)) ** 0.5 + 1.2))
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
    return finish(fig, title)



def reliability_diagram(df: pd.DataFrame, hue: str = "model", n_bins: int = 10, title: str | None = None) -> Figure:
    """Reliability diagram: accuracy against confidence in equal-width bins, with a count histogram below.

    Columns: ``confidence`` (probability of the chosen letter, normalized over A-D), ``correct`` (bool);
    optional ``hue`` column (default ``model``) for one curve per model. The legend gives each curve's ECE.
    """
    require_columns(df, ["confidence", "correct"], "reliability_diagram")
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
    return finish(fig, title)



def _letter(values: pd.Series) -> pd.Series:
    return values.map(lambda v: LETTERS[int(v)] if not isinstance(v, str) else v)



def position_bias(df: pd.DataFrame, hue: str = "model", title: str | None = None) -> Figure:
    """Share of predictions per answer letter, next to the share of questions whose answer is that letter.

    Columns: ``prediction`` and ``answer`` (0-3 or "A"-"D"); optional ``hue`` column (default ``model``).
    A model without position bias follows the "answer key" bars.
    """
    require_columns(df, ["prediction", "answer"], "position_bias")
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
    fig, ax = new_figure(6.5, 3.8)
    sns.barplot(data=share, x="letter", y="share", hue=hue, order=list(LETTERS), hue_order=first_seen_order(long[hue]), ax=ax)
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("answer letter")
    ax.set_ylabel("share of questions")
    ax.legend(fontsize="small")
    return finish(fig, title)



def ablation_plot(df: pd.DataFrame, setting: str = "setting", hue: str | None = "ablation",
                  title: str | None = None, chance: float | None = CHANCE,
                  prior: tuple[str, float] | None = None) -> Figure:
    """Accuracy with its interval for each ablation setting, one row per setting.

    Columns: ``setting`` (a label, e.g. "r=8"), ``accuracy``, ``ci_low``, ``ci_high``; optional ``hue``
    column (default ``ablation``, e.g. "lora.r") that colours settings of one family alike. ``prior`` (letter,
    accuracy) adds the line of always answering the key's most frequent letter beside the chance line: a model
    left of it has not beaten the letter prior.
    """
    require_columns(df, [setting, "accuracy", "ci_low", "ci_high"], "ablation_plot")
    data = df.reset_index(drop=True)
    fig, ax = new_figure(7, max(2.5, 0.45 * len(data) + 1.2) + 0.8)
    families = first_seen_order(data[hue].astype(str)) if hue and hue in data.columns else [None]
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
    return finish(fig, title)



def results_overview(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Size, accuracy (with interval) and batch-1 latency of every evaluated run, side by side.

    Columns (``records.results_table``): ``run``, ``weights``, ``size_gb``, ``accuracy``, ``ci_low``,
    ``ci_high``, ``latency_ms``. Runs whose ``weights`` is not "real" are labelled in the run names.
    """
    require_columns(table, ["run", "weights", "size_gb", "accuracy", "ci_low", "ci_high", "latency_ms"], "results_overview")
    labels = [r if w == "real" else f"{r}\n({w})" for r, w in zip(table["run"], table["weights"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (size, acc, lat) = plt.subplots(1, 3, figsize=(COLUMN_WIDTH, 0.5 * len(table) + 2), sharey=True)
    y = np.arange(len(table))
    colors = sns.color_palette(n_colors=len(table))
    unit = byte_unit(np.nanmax(table["size_gb"].to_numpy(float) * 1e9)) if table["size_gb"].notna().any() else "GB"
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
    return finish(fig, title)
