"""The report pages' figures (the book's intro and Results page), drawn at the page column's width.

* :func:`headline_accuracy` - accuracy with its interval per model and metric (standard and position-robust),
  with the chance line and the line of always answering the key's most frequent letter;
* :func:`letter_prior` - the share of each letter among a model's answers, beside the answer key's;
* :func:`accuracy_dots` - accuracy with its interval per group (e.g. subject), one marker per model.

Each takes a tidy DataFrame (``medcore.report.study`` builds them) and returns a closed Figure.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from medcore.report.figure import CHANCE, COLUMN_WIDTH, LETTERS, finish, first_seen_order, new_figure, require_columns

METRIC_LABELS = {"standard": "standard", "circular": "circular (right in all four orders)",
                 "debiased": "permutation-debiased"}


def _dots(ax, df: pd.DataFrame, models: list, metrics: list, colors: dict) -> None:
    step = 0.22 if len(metrics) > 1 else 0
    for j, metric in enumerate(metrics):
        part = df[df["metric"] == metric].set_index("model")
        y = np.array([models.index(m) for m in part.index]) + (j - (len(metrics) - 1) / 2) * step
        acc = part["accuracy"].to_numpy(float)
        err = [np.maximum(acc - part["ci_low"].to_numpy(float), 0), np.maximum(part["ci_high"].to_numpy(float) - acc, 0)]
        ax.errorbar(acc, y, xerr=err, fmt="o", color=colors[metric], capsize=3, label=METRIC_LABELS.get(metric, metric))
        for a, yy in zip(acc, y):
            ax.annotate(f"{a:.2%}" if 0 < a < 0.01 else f"{a:.1%}", (a, yy), xytext=(0, 5), textcoords="offset points", ha="center",
                        fontsize="x-small", color=colors[metric])
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def headline_accuracy(df: pd.DataFrame, prior: tuple[str, float] | None = None, title: str | None = None,
                      chance: float | None = CHANCE) -> Figure:
    """One row per model, one marker per metric with its 95 % interval.

    Columns: ``model``, ``metric`` (standard / circular / debiased), ``accuracy``, ``ci_low``, ``ci_high``;
    optional ``scoring`` (a model whose records were scored with ties says so in its label). ``prior`` (letter,
    accuracy) draws always answering that letter: a standard accuracy left of it can be earned by the letter
    prior alone; the position-robust metrics give a letter preference nothing. Circular accuracy (right in all four
    orders) lives on another scale and gets its own narrow panel on the left.
    """
    require_columns(df, ["model", "metric", "accuracy", "ci_low", "ci_high"], "headline_accuracy")
    models, metrics = first_seen_order(df["model"]), first_seen_order(df["metric"])
    labels = []
    for m in models:
        scoring = set(df.loc[df["model"] == m, "scoring"]) if "scoring" in df else set()
        labels.append(f"{m}\n(scored with ties)" if "scored with ties" in scoring else m)
    colors = dict(zip(metrics, sns.color_palette(n_colors=len(metrics))))
    side = [m for m in metrics if m == "circular"]
    main = [m for m in metrics if m != "circular"] or side
    side = side if main != side else []
    height = 1.6 + 0.75 * len(models) + 0.25 * len(metrics)
    sns.set_theme(style="whitegrid", context="notebook")
    if side:
        fig, (axc, ax) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, height), sharey=True,
                                      gridspec_kw={"width_ratios": [1, 3]})
        part = df[df["metric"].isin(side)]
        _dots(axc, part, models, side, colors)
        axc.set_xlim(0, max(0.05, float(part["ci_high"].max()) * 1.3))
        axc.set_title("circular", fontsize="small")
        ax.set_title("standard and debiased", fontsize="small")
    else:
        fig, ax = new_figure(height=height)
        axc = None
    shown = df[df["metric"].isin(main)]
    _dots(ax, shown, models, main, colors)
    (axc or ax).set_yticks(range(len(models)), labels)
    ax.set_ylim(len(models) - 0.5, -0.5)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance: one letter in four")
    if prior is not None:
        ax.axvline(prior[1], color="firebrick", linestyle=":", linewidth=1.8,
                   label=f"always {prior[0]}, the key's most frequent letter")
    low = min(float(shown["ci_low"].min()), chance or 1) - 0.03
    high = max(float(shown["ci_high"].max()), prior[1] if prior else 0) + 0.03
    ax.set_xlim(max(low, 0), min(high, 1))
    ax.set_xlabel("accuracy (95% interval)")
    handles = [h for a in ([axc] if axc else []) + [ax] for h in zip(*a.get_legend_handles_labels())]
    fig.legend([h for h, _ in handles], [t for _, t in handles], fontsize="small", loc="lower center", ncol=2,
               frameon=False, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))
    if title:
        fig.suptitle(title)
    plt.close(fig)
    return fig


def letter_prior(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Share of each answer letter among a model's answers, beside the answer key's share (hatched).

    Columns: ``model`` (one of them "answer key"), ``letter`` (A-D), ``share`` in [0, 1]. A model without a
    letter preference follows the key's bars; one that leans to a letter stands above the key there.
    """
    require_columns(df, ["model", "letter", "share"], "letter_prior")
    order = [m for m in first_seen_order(df["model"]) if m != "answer key"] + (["answer key"] if "answer key" in set(df["model"]) else [])
    fig, ax = new_figure(height=3.8)
    palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
    palette["answer key"] = (0.85, 0.85, 0.85)
    sns.barplot(data=df, x="letter", y="share", hue="model", order=list(LETTERS), hue_order=order, palette=palette,
                ax=ax, edgecolor="black", linewidth=0.6)
    if "answer key" in order:
        for bar in ax.containers[order.index("answer key")]:
            bar.set_hatch("//")
    ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("answer letter")
    ax.set_ylabel("share of questions")
    sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.18), title=None, fontsize="small", ncol=3,
                    frameon=False)
    return finish(fig, title)


def accuracy_dots(df: pd.DataFrame, group: str, hue: str = "model", title: str | None = None,
                  chance: float | None = CHANCE) -> Figure:
    """Accuracy with its 95 % interval per ``group`` (sorted by questions, largest first), one marker per ``hue``.

    Columns: ``group``, ``hue``, ``accuracy``, ``ci_low``, ``ci_high``; optional ``n`` (shown in the labels).
    """
    require_columns(df, [group, hue, "accuracy", "ci_low", "ci_high"], "accuracy_dots")
    data = df.copy()
    sizes = data.groupby(group)["n"].max() if "n" in data else pd.Series(1, index=data[group].unique())
    groups = sizes.sort_values(ascending=False).index.tolist()
    hues = first_seen_order(data[hue].astype(str))
    fig, ax = new_figure(height=1.4 + 0.3 * len(groups))
    colors = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    for j, level in enumerate(hues):
        part = data[data[hue].astype(str) == level].set_index(group).reindex(groups).dropna(subset=["accuracy"])
        y = np.array([groups.index(g) for g in part.index]) + (j - (len(hues) - 1) / 2) * 0.3
        acc = part["accuracy"].to_numpy(float)
        err = [np.maximum(acc - part["ci_low"].to_numpy(float), 0), np.maximum(part["ci_high"].to_numpy(float) - acc, 0)]
        ax.errorbar(acc, y, xerr=err, fmt="o", markersize=4, color=colors[level], capsize=2, elinewidth=1, label=level)
    labels = [f"{g} ({int(sizes[g])})" if "n" in data else str(g) for g in groups]
    ax.set_yticks(range(len(groups)), labels, fontsize="small")
    ax.set_ylim(len(groups) - 0.5, -0.5)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    big = data[data[group].isin(groups[: max(1, len(groups) * 3 // 4)])]  # tiny groups' intervals span everything
    ax.set_xlim(max(0.0, float(big["ci_low"].min()) - 0.05), min(1.0, float(big["ci_high"].max()) + 0.05))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("accuracy (95% interval); questions in brackets")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, frameon=False)
    return finish(fig, title)


__all__ = ["headline_accuracy", "letter_prior", "accuracy_dots", "COLUMN_WIDTH"]
