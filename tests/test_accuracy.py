"""Accuracy of a predictions frame: intervals, breakdowns, calibration and position bias."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from medcore.accuracy import accuracy_summary


def test_accuracy_summary_on_synthetic_predictions():
    rng = np.random.default_rng(0)
    n = 4000
    prob = rng.uniform(0.25, 1.0, n)
    answer = rng.integers(0, 4, n)
    correct = rng.random(n) < prob
    pred = np.where(correct, answer, (answer + rng.integers(1, 4, n)) % 4)
    df = pd.DataFrame({"subject": rng.choice(["Anatomy", "Surgery", "Pharmacology"], n), "answer": answer,
                       "pred": pred, "correct": correct, "prob": prob, "choice_type": None, "truncated": False})
    df["tier"] = df["subject"].map({"Anatomy": "pre-clinical", "Surgery": "clinical", "Pharmacology": "para-clinical"})
    s = accuracy_summary(df)
    assert s["n"] == n and s["accuracy"] == pytest.approx(correct.mean())
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(proportion_confint(correct.sum(), n, method="wilson"))
    assert s["ece"] < 0.03  # calibrated by construction
    assert s["by_tier"]["n"].sum() == n and list(s["by_choice_type"]["choice_type"]) == ["unknown"]
    sub = s["by_subject"].set_index("subject").loc["Surgery"]
    assert sub["accuracy"] == pytest.approx(df[df.subject == "Surgery"]["correct"].mean())
    assert s["letters"]["answer"].sum() == n and s["position_bias_pvalue"] > 0.001
    assert s["reliability"]["n"].sum() == n
    biased = df.assign(pred=0, correct=df["answer"] == 0)
    assert accuracy_summary(biased)["position_bias_pvalue"] < 1e-10
