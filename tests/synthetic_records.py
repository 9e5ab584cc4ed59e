"""Small synthetic prediction frames and scoring records (the fields `medcore.flows.workflows` writes), for the
tests of the report tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from medcore import stats
from medcore.records import write_run_record


def make_preds(ids, correct, seed=0) -> pd.DataFrame:
    """One row per question id: a random key, the prediction right where ``correct``, a confidence."""
    rng = np.random.default_rng(seed)
    answer = rng.integers(0, 4, len(ids))
    pred = np.where(correct, answer, (answer + 1) % 4)
    return pd.DataFrame({"id": ids, "subject": "Anatomy", "tier": "pre-clinical", "choice_type": "single",
                         "answer": answer, "pred": pred, "correct": np.asarray(correct, bool),
                         "prob": rng.uniform(0.25, 1, len(ids))})


def make_record(folder, run_id, cfg, role, preds, precision="nf4+dq", real=False, **metrics):
    """A scoring record of ``preds`` with its accuracy, Wilson interval and one tier, plus ``metrics``."""
    k, n = int(preds["correct"].sum()), len(preds)
    low, high = stats.wilson_interval(k, n)
    by_tier = [{"index": 0, "tier": "pre-clinical", "n": n, "correct": k, "accuracy": k / n, "ci_low": low,
                "ci_high": high}]
    m = {"role": role, "precision": precision, "n": n, "correct": k, "accuracy": k / n, "ci_low": low,
         "ci_high": high, "by_tier": by_tier, "real_weights": real, **metrics}
    return write_run_record(folder, run_id, cfg.to_dict(), m, predictions=preds, extra={"real_weights": real})
