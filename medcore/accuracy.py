"""Accuracy of a predictions frame (:func:`medcore.evaluate.score_choices`'s, or one read back from a run record).

:func:`accuracy_summary` gathers everything a run record reports: accuracy with a 95 % Wilson interval (tied
letters earn 1/k credit), breakdowns by subject, tier and question type, predicted letter shares and recall per
answer letter (:func:`letter_distribution`, :func:`letter_recall`), a chi-square test of position bias,
calibration, and, where the frame has rotation columns, circular and permutation-debiased accuracy with the letters
pooled over the four orders (:func:`letters_all_orders`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chisquare

from medcore.prompts import LETTERS
from medcore.stats import expected_calibration_error, grouped_accuracy, reliability_curve, wilson_interval


def _rate(k: float, n: int) -> tuple[float, float, float]:
    low, high = wilson_interval(k, n)
    return (k / n if n else float("nan")), low, high


def letter_distribution(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs true letter counts and shares, the predicted share with a 95 % Wilson interval: a model that
    favours one position shows it here."""
    pred = np.bincount(df["pred"][df["pred"] >= 0].astype(int), minlength=4)[:4]
    ans = np.bincount(df["answer"].astype(int), minlength=4)[:4]
    ci = [wilson_interval(int(k), int(pred.sum())) for k in pred]
    return pd.DataFrame({"letter": list(LETTERS), "predicted": pred, "answer": ans,
                         "predicted_share": pred / max(pred.sum(), 1), "answer_share": ans / max(ans.sum(), 1),
                         "predicted_ci_low": [c[0] for c in ci], "predicted_ci_high": [c[1] for c in ci]})


def letter_recall(df: pd.DataFrame, credit: str = "credit") -> pd.DataFrame:
    """Per answer letter (original order): questions keyed there, credit earned, recall with a Wilson interval."""
    score = credit if credit in df else "correct"
    rows = []
    for j, letter in enumerate(LETTERS):
        part = df[df["answer"] == j]
        k = float(part[score].sum())
        rows.append({"letter": letter, "n": len(part), "correct": k,
                     **dict(zip(("recall", "ci_low", "ci_high"), _rate(k, len(part))))})
    return pd.DataFrame(rows)


def letters_all_orders(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted letters pooled over the four cyclic orders, where each letter is the key of exactly a quarter:
    any share away from 0.25 is position preference. Intervals treat the 4 n choices as independent (optimistic)."""
    preds = np.concatenate([df["pred"].to_numpy()] + [df[f"pred_r{k}"].to_numpy() for k in (1, 2, 3)])
    counts = np.bincount(preds, minlength=4)[:4]
    ci = [wilson_interval(int(k), len(preds)) for k in counts]
    return pd.DataFrame({"letter": list(LETTERS), "predicted": counts, "predicted_share": counts / len(preds),
                         "ci_low": [c[0] for c in ci], "ci_high": [c[1] for c in ci]})


def accuracy_summary(preds: pd.DataFrame, n_bins: int = 10) -> dict[str, Any]:
    """Accuracy with a 95 % Wilson interval, breakdowns, position bias and calibration of a predictions frame.

    Keys: n, correct (credit: 1/k per k-way tie), accuracy, ci_low, ci_high, truncated, by_subject / by_tier /
    by_choice_type (DataFrames: n, correct, accuracy, ci_low, ci_high), letters (:func:`letter_distribution`),
    letter_recall (:func:`letter_recall`) and flat recall_<L>, predicted_share_<L>, position_bias_pvalue
    (chi-square of predicted letters against the answer-key shares), ties; where ``prob`` exists: mean_confidence,
    ece (equal-width bins over the chosen letter's normalized probability) and reliability (plot data).
    rotations (whether the frame has rotation columns); with them (``score_choices(rotations=True)``): circular_accuracy,
    debiased_accuracy (each with _ci_low / _ci_high), ties_all_orders, debiased_ties, letters_all_orders and flat
    predicted_share_all_orders_<L>.
    """
    score = "credit" if "credit" in preds else "correct"
    k, n = float(preds[score].sum()), len(preds)
    low, high = wilson_interval(k, n)
    out: dict[str, Any] = {"n": n, "correct": k, "accuracy": k / n if n else float("nan"), "ci_low": low,
                           "ci_high": high, "truncated": int(preds.get("truncated", pd.Series(dtype=bool)).sum())}
    for col in ("subject", "tier", "choice_type"):
        if col in preds:
            out[f"by_{col}"] = grouped_accuracy(preds, col, correct=score)
    letters = letter_distribution(preds)
    out["letters"] = letters
    recall = letter_recall(preds, score)
    out["letter_recall"] = recall
    out.update({f"recall_{r.letter}": r.recall for r in recall.itertuples()})
    out.update({f"predicted_share_{r.letter}": r.predicted_share for r in letters.itertuples()})
    expected = letters["answer_share"].to_numpy() * letters["predicted"].sum()
    ok = expected.sum() > 0 and (expected > 0).all()
    if ok:
        out["position_bias_pvalue"] = float(chisquare(letters["predicted"], expected).pvalue)
    else:
        out["position_bias_pvalue"] = float("nan")
    if "parsed" in preds:
        out["unparseable"] = int((~preds["parsed"]).sum())
    if "tied" in preds:
        out["ties"] = int(preds["tied"].sum())
    out["rotations"] = "circular_credit" in preds
    if out["rotations"]:
        for name in ("circular", "debiased"):
            rate = _rate(float(preds[f"{name}_credit"].sum()), n)
            out.update(zip((f"{name}_accuracy", f"{name}_ci_low", f"{name}_ci_high"), rate))
        out["ties_all_orders"] = int(preds["ties_in_orders"].sum())
        out["debiased_ties"] = int(preds["debiased_tied"].sum())
        pooled = letters_all_orders(preds)
        out["letters_all_orders"] = pooled
        out.update({f"predicted_share_all_orders_{r.letter}": r.predicted_share for r in pooled.itertuples()})
    if "prob" in preds:
        out["mean_confidence"] = float(preds["prob"].mean())
        out["ece"] = expected_calibration_error(preds["prob"], preds["correct"], n_bins)
        out["reliability"] = reliability_curve(preds["prob"], preds["correct"], n_bins)
    return out
