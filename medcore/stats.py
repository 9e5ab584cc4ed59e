"""Confidence intervals, paired tests and calibration for accuracy on multiple-choice questions.

Small, dependency-light functions that the tests check against statsmodels, scipy and scikit-learn:

* :func:`wilson_interval` - the interval for one accuracy (statsmodels ``proportion_confint(method="wilson")``);
* :func:`bootstrap_interval` - a percentile bootstrap for any statistic, e.g. a paired accuracy difference;
* :func:`mcnemar_exact` - the exact (binomial) McNemar test for two models scored on the same questions;
* :func:`relative_improvement` - (after - before) / before;
* :func:`grouped_accuracy` - accuracy with Wilson intervals per subject, tier or question type;
* :func:`expected_calibration_error` and :func:`reliability_curve` - calibration of the model's confidence
  (its probability of the letter it chose, normalized over the four letters).

scipy and scikit-learn are imported only inside the functions that need them, so scoring and Wilson intervals
work on a machine that lacks them.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np


def wilson_interval(k: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes out of n; (nan, nan) when n == 0. ``k`` may be fractional: the
    credit of questions whose tie split it (the interval of k / n with n trials).

    Preferred over the normal (Wald) interval: it stays inside [0, 1] and keeps its coverage near 0 and 1
    and for the few hundred questions a CPU run scores.
    """
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be between 0 and n={n}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 rounding residue
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
                       n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over resamples (with replacement) of ``values``.

    For a paired comparison of two runs pass the per-question differences, ``correct_b - correct_a``: resampling
    questions keeps the pairing. ``stat`` gets a 1-D array and must return a number.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.array([stat(x[row]) for row in idx], dtype=float)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test of two models on the same questions.

    ``b`` counts questions only A got right, ``c`` those only B got right; under "equally accurate" the
    discordant questions split as Binomial(b + c, 1/2), and ``pvalue`` is the two-sided exact binomial p-value
    (1.0 when there are no discordant pairs). Same result as statsmodels ``mcnemar(table, exact=True)``.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired results must have the same length, got {a.shape} and {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    from scipy.stats import binomtest

    pvalue = 1.0 if b + c == 0 else float(min(1.0, binomtest(b, b + c, 0.5).pvalue))
    return {"b": b, "c": c, "n": int(a.size), "pvalue": pvalue}


def relative_improvement(before: float, after: float) -> float:
    """(after - before) / before: +0.10 means "10 % better than before"; nan when before is 0."""
    if before == 0:
        return float("nan")
    return float((after - before) / before)


def grouped_accuracy(df, by: str, correct: str = "correct"):
    """Accuracy per value of column ``by`` (missing -> "unknown"): DataFrame [by, n, correct, accuracy, ci_low,
    ci_high] with 95 % Wilson intervals, sorted by ``by``. ``correct`` may hold fractional credit (a tie's 1/k)."""
    import pandas as pd

    rows = []
    for key, part in df.groupby(df[by].fillna("unknown").astype(str), sort=True):
        k, n = part[correct].sum(), len(part)
        k = int(k) if part[correct].dtype == bool else float(k)
        rows.append({by: key, "n": n, "correct": k, "accuracy": k / n, **dict(zip(("ci_low", "ci_high"),
                                                                                   wilson_interval(k, n)))})
    return pd.DataFrame(rows, columns=[by, "n", "correct", "accuracy", "ci_low", "ci_high"])


def _bin_ids(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # same binning as sklearn.calibration.calibration_curve(strategy="uniform"), so ECE and the plot agree
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(bins[1:-1], confidence)


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=float)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in shape: {conf.shape} vs {corr.shape}")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidence must lie in [0, 1]")
    return conf, corr


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of (share of questions) x |accuracy - mean confidence|.

    ``confidence`` is the probability the model gave the letter it chose (normalized over A-D), ``correct``
    whether that letter was right. 0 is perfect calibration; with four choices confidence is at least 0.25.
    """
    conf, corr = _check(confidence, correct)
    if conf.size == 0:
        return float("nan")
    ids = _bin_ids(conf, n_bins)
    total = 0.0
    for b in np.unique(ids):
        mask = ids == b
        total += mask.sum() / conf.size * abs(corr[mask].mean() - conf[mask].mean())
    return float(total)


def reliability_curve(confidence, correct, n_bins: int = 10):
    """Reliability-plot data: a DataFrame (confidence, accuracy, n) for each non-empty equal-width bin.

    ``accuracy`` and ``confidence`` come from ``sklearn.calibration.calibration_curve``; ``n`` is the bin size.
    """
    import pandas as pd
    from sklearn.calibration import calibration_curve

    conf, corr = _check(confidence, correct)
    if conf.size == 0:
        return pd.DataFrame(columns=["confidence", "accuracy", "n"])
    prob_true, prob_pred = calibration_curve(corr.astype(int), conf, n_bins=n_bins, strategy="uniform")
    counts = np.bincount(_bin_ids(conf, n_bins), minlength=n_bins)
    return pd.DataFrame({"confidence": prob_pred, "accuracy": prob_true, "n": counts[counts > 0]})
