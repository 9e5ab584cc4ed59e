"""The numbered notebooks' tables (medcore.report.run): at most about seven columns in the reader's units, a
random-weight run labelled."""
from __future__ import annotations

import numpy as np
import pandas as pd

from medcore.report import book as rp
from medcore.report import tables as an
from medcore.report import run as view


def test_views_keep_seven_columns_and_label_random_weights():
    results = pd.DataFrame({"run": ["ci-zero-shot", "ci-fine-tuned"], "weights": an.RANDOM_LABEL,
                            "precision": "nf4+dq", "n": [48, 48], "accuracy": [0.25, 0.3125], "ci_low": [0.15, 0.2],
                            "ci_high": [0.39, 0.45], "size_gb": [0.0021, 0.0022], "baseline_run": [None, "ci-zero-shot"]})
    shown = view.results_view(results).set_index("record")
    assert len(shown.columns) + 1 <= rp.WIDE
    assert shown.loc["ci-fine-tuned", "against zero-shot"] == rp.points(0.0625)
    assert shown.loc["ci-zero-shot", "against zero-shot"] == rp.MISSING
    summary = pd.DataFrame({"precision": ["bf16", "nf4+dq"], "total_bytes": [5e9, 2e9], "disk_bytes": [5e9, 2.1e9],
                            "size_vs_bf16": [1.0, 0.4], "embedding_bytes": [1e9, 1e9], "quant_constant_bytes": [0, 5e7],
                            "status": ["ok", "ok"]})
    foot = view.footprint_view(summary, real=False)
    assert list(foot["weights"]) == [an.RANDOM_LABEL] * 2 and len(foot.columns) <= rp.WIDE
    assert list(foot["vs bf16"]) == [rp.pct(1.0, 0), rp.pct(0.4, 0)] and "status" not in foot
    trains = pd.DataFrame({"run": ["ci-train"], "questions": [48], "steps": [4], "train loss": [5.559715],
                           "examples/s": [2.396288], "real tokens/s": [492.6], "wall seconds": [25.14],
                           "peak memory (GB)": [3.0], "trainable parameters": [1000]})
    shown = view.train_view(trains, real=True)
    assert len(shown.columns) <= rp.WIDE and shown.loc[0, "mean training loss"] == "5.560"
    text = rp.table(shown)._repr_html_()
    assert "5.559715" not in text and "nan" not in text.lower()


def test_loss_sentence_and_breakdown_view():
    history = pd.DataFrame({"step": [1, 2, 2], "loss": [2.0, 1.5, 1.6], "split": ["train", "train", "eval"]})
    assert view.loss_sentence(history).startswith("The answer-letter training loss went from 2.000 to 1.500 over 2")
    long = pd.DataFrame({"tier": ["clinical", "clinical"], "n": [10, 10], "accuracy": [0.2, 0.4],
                         "ci_low": [0.05, 0.15], "ci_high": [0.5, 0.7], "model": ["zero-shot", "fine-tuned"]})
    shown = view.breakdown_view(long, "tier")
    assert list(shown.columns) == ["tier", "questions", "zero-shot", "fine-tuned"]
    assert shown.loc[0, "fine-tuned"] == rp.interval(0.4, 0.15, 0.7) and not np.any(shown.isna())
