"""Medicine apart from letters, across run records: the position-robust metrics and what they are measured
against.

A multiple-choice score can rise by learning which letter is most often right, so every comparison here carries
the position-robust metrics beside the standard one (each question scored in four option rotations):

- :func:`position_table`: standard, circular and debiased accuracy with intervals, exact ties, predicted-letter
  shares and per-letter recall, one row per scoring record;
- :func:`metric_tests` / :func:`all_metric_tests`: the exact McNemar test of two records on every metric, matched
  by question id;
- :func:`seed_spread`: mean and spread of those metrics over seeds, the yardstick for a difference between recipes;
- :func:`majority_letter`: the score of always answering the key's most frequent letter;
- :func:`scored_exactly`: whether a record split its ties fairly (bf16 scoring gave every tie to the first letter).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore import stats
from medcore.report.tables import SCORING_ROLES, get, role_of, weights_label
from medcore.records import load_predictions

ACCURACIES = {"standard": "correct", "circular": "circular_correct", "debiased": "debiased_correct"}  # per question


def metric_tests(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Exact McNemar test of two prediction frames, matched by ``id``, on every metric both carry: ``standard``,
    ``circular``, ``debiased`` (each question right or not), ``recall_<L>`` (the questions keyed L) and
    ``predicted_<L>`` (whether L was the chosen letter: a change of that letter's share). Columns: metric, n, b
    (only ``before`` has it), c (only ``after``), pvalue, before and after (the rates on the matched questions),
    difference. Rates use the per-question outcome (a tie's drawn letter), so they equal the records' 1/k-credit
    accuracies wherever no letter tied."""
    for name, df in (("before", before), ("after", after)):
        if df["id"].duplicated().any():
            raise ValueError(f"{name} predictions repeat question ids; pairing needs one row per question")
    cols = ["id", "answer", "pred", *[c for c in ACCURACIES.values() if c in before and c in after]]
    both = before[cols].merge(after[cols], on="id", suffixes=("_before", "_after"))
    pairs = {metric: (both[f"{col}_before"], both[f"{col}_after"], slice(None))
             for metric, col in ACCURACIES.items() if f"{col}_before" in both}
    for j, letter in enumerate("ABCD"):
        keyed = (both["answer_before"] == j).to_numpy()
        pairs[f"recall_{letter}"] = (both["correct_before"], both["correct_after"], keyed)
        pairs[f"predicted_{letter}"] = (both["pred_before"] == j, both["pred_after"] == j, slice(None))
    rows = []
    for metric, (a, b, keep) in pairs.items():
        a, b = a.to_numpy(bool)[keep], b.to_numpy(bool)[keep]
        test = stats.mcnemar_exact(a, b)
        rate = (lambda x: float(x.mean()) if len(x) else np.nan)
        rows.append({"metric": metric, "n": test["n"], "b": test["b"], "c": test["c"], "pvalue": test["pvalue"],
                     "before": rate(a), "after": rate(b), "difference": rate(b) - rate(a)})
    return pd.DataFrame(rows, columns=["metric", "n", "b", "c", "pvalue", "before", "after", "difference"])


def all_metric_tests(table: pd.DataFrame, results_dir: str | Path) -> pd.DataFrame:
    """:func:`metric_tests` for every row of :func:`results_table` that has a baseline, both records' predictions
    present: before, after, then metric_tests' columns, one row per metric."""
    parts = []
    for _, r in table.dropna(subset=["baseline_run"]).iterrows():
        folders = [Path(results_dir) / run for run in (r["baseline_run"], r["run"])]
        if all((f / "predictions.parquet").is_file() for f in folders):
            tests = metric_tests(load_predictions(folders[0]), load_predictions(folders[1]))
            parts.append(tests.assign(before_run=r["baseline_run"], after_run=r["run"]))
    columns = ["before_run", "after_run", "metric", "n", "b", "c", "pvalue", "before", "after", "difference"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


POSITION_COLUMNS = ["accuracy", "ci_low", "ci_high", "circular_accuracy", "circular_ci_low", "circular_ci_high",
                    "debiased_accuracy", "debiased_ci_low", "debiased_ci_high", "ties",
                    *[f"predicted_share_{c}" for c in "ABCD"], *[f"recall_{c}" for c in "ABCD"]]


def position_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scoring record: run, role, precision, n, weights, then standard / circular / debiased accuracy
    with intervals, exact ties, predicted-letter shares and per-letter recall (NaN where a record lacks them, e.g.
    one scored without rotations)."""
    columns = ["run", "role", "precision", "n", "weights", *POSITION_COLUMNS]
    if runs is None or len(runs) == 0 or "accuracy" not in runs.columns:
        return pd.DataFrame(columns=columns)
    scored = runs[runs["accuracy"].notna() & runs.get("role", pd.Series("", index=runs.index)).isin(SCORING_ROLES)]
    rows = [{"run": r["run_id"], "role": role_of(r), "precision": get(r, "precision"), "n": get(r, "n"),
             "weights": weights_label(r), **{c: get(r, c, default=np.nan) for c in POSITION_COLUMNS}}
            for _, r in scored.iterrows()]
    return pd.DataFrame(rows, columns=columns)


SEED_METRICS = ("accuracy", "circular_accuracy", "debiased_accuracy", "predicted_share_A")


def seed_spread(runs: pd.DataFrame, metrics: tuple[str, ...] = SEED_METRICS) -> pd.DataFrame:
    """Mean and spread over seeds: scoring records of one role whose configs differ only in ``train.seed`` (and the
    name) form a recipe. Per recipe with two or more seeds and per metric: runs, seeds, mean, sd (n - 1), min, max.
    A difference between recipes reads as an effect only where it exceeds this spread."""
    columns = ["recipe", "role", "metric", "runs", "seeds", "mean", "sd", "min", "max"]
    if runs is None or len(runs) == 0 or "config.train.seed" not in runs.columns:
        return pd.DataFrame(columns=columns)
    scored = runs[runs.get("role", pd.Series("", index=runs.index)).isin(SCORING_ROLES)]
    skip = {"config.name", "config.results_dir", "config.train.seed"}
    keys = [c for c in scored.columns if c.startswith("config.") and c not in skip]
    rows = []
    for _, group in scored.groupby([scored[k].map(str) for k in keys] + [scored["role"]], sort=False, dropna=False):
        if group["config.train.seed"].nunique() < 2:
            continue
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna() if metric in group else pd.Series(dtype=float)
            if len(values) < 2:
                continue
            rows.append({"recipe": group.sort_values("config.train.seed")["run_id"].iloc[0], "role": role_of(group.iloc[0]),
                         "metric": metric, "runs": ", ".join(group["run_id"]),
                         "seeds": ", ".join(str(int(s)) for s in sorted(group["config.train.seed"])),
                         "mean": values.mean(), "sd": values.std(ddof=1), "min": values.min(), "max": values.max()})
    return pd.DataFrame(rows, columns=columns)



def majority_letter(answers: Any) -> dict[str, Any]:
    """What always answering the key's most frequent letter scores on these questions (answers 0..3 or "A".."D"):
    letter, correct, n, accuracy and its Wilson interval. A multiple-choice score below this line can be earned
    by the letter prior alone."""
    letters = pd.Series(list(answers)).map(lambda a: "ABCD"[int(a)] if not isinstance(a, str) else a)
    counts = letters.value_counts().reindex(list("ABCD"), fill_value=0)
    letter, correct, n = counts.idxmax(), int(counts.max()), int(counts.sum())
    low, high = stats.wilson_interval(correct, n)
    return {"letter": letter, "correct": correct, "n": n, "accuracy": correct / n if n else np.nan,
            "ci_low": low, "ci_high": high}


def scored_exactly(predictions: pd.DataFrame) -> bool:
    """Whether a record's ties were split fairly: exact scoring writes each answer's 1/k ``credit``. Records from
    before it scored in bf16 and gave every tie to the earliest tied letter, which flatters A."""
    return "credit" in predictions.columns
