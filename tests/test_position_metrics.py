"""The position-robust metrics across records (medcore.report.position_metrics), on small synthetic records."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medcore import stats
from medcore.config import load_profile
from medcore.report import position_metrics as pos
from medcore.records import load_runs
from tests.synthetic_records import make_preds, make_record


def _rotated(ids, correct, circular, debiased, pred):
    """A predictions frame with the rotation columns metric_tests reads."""
    df = pd.DataFrame({"id": ids, "answer": 0, "pred": pred, "correct": np.asarray(correct, bool)})
    return df.assign(circular_correct=np.asarray(circular, bool), debiased_correct=np.asarray(debiased, bool))


def test_metric_tests_pair_every_metric_by_question():
    ids = [f"q{i}" for i in range(6)]
    before = _rotated(ids, [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 2])
    before["answer"] = [0, 0, 0, 1, 1, 2]
    before["correct"] = before["pred"] == before["answer"]  # all right; 3 keyed A
    after = before.assign(pred=[0, 1, 1, 1, 0, 2], circular_correct=[1, 1, 0, 0, 0, 0],
                          debiased_correct=[1, 1, 1, 1, 0, 0]).iloc[::-1]
    after["correct"] = after["pred"] == after["answer"]
    t = pos.metric_tests(before, after).set_index("metric")
    assert list(t.index) == ["standard", "circular", "debiased", *[f"{k}_{c}" for c in "ABCD"
                                                                   for k in ("recall", "predicted")]]
    assert tuple(t.loc["standard", ["n", "b", "c"]]) == (6, 3, 0) and t.loc["standard", "after"] == 0.5
    assert tuple(t.loc["circular", ["b", "c", "before", "after"]]) == (0, 2, 0.0, 2 / 6)
    assert tuple(t.loc["debiased", ["b", "c"]]) == (0, 3)
    assert tuple(t.loc["recall_A", ["n", "b", "c", "after"]]) == (3, 2, 0, 1 / 3)  # only the questions keyed A
    assert tuple(t.loc["recall_B", ["n", "b", "c"]]) == (2, 1, 0) and t.loc["recall_D", "n"] == 0
    assert tuple(t.loc["predicted_B", ["b", "c", "before", "after"]]) == (1, 2, 2 / 6, 3 / 6)
    assert t.loc["debiased", "pvalue"] == pytest.approx(stats.mcnemar_exact([0, 0, 0], [1, 1, 1])["pvalue"])
    plain = pos.metric_tests(before.drop(columns=["circular_correct"]), after)
    assert "circular" not in set(plain["metric"]) and "debiased" in set(plain["metric"])


def test_position_table_and_seed_spread_read_the_records(tmp_path):
    cfg = load_profile("ci")
    ids = [f"q{i}" for i in range(20)]
    for seed, (acc, circ) in enumerate([(10, 4), (12, 5), (14, 3)]):
        run = cfg.__class__.from_dict(cfg.to_dict())
        run.train.seed = seed
        make_record(tmp_path, f"ci-seed{seed}-fine-tuned", run, "fine-tuned", make_preds(ids, np.arange(20) < acc),
                    circular_accuracy=circ / 20, debiased_accuracy=0.3, predicted_share_A=0.5 + seed / 10)
    make_record(tmp_path, "ci-zero-shot", cfg, "zero-shot", make_preds(ids, np.arange(20) < 5))
    runs = load_runs(tmp_path)
    table = pos.position_table(runs).set_index("run")
    assert table.loc["ci-seed1-fine-tuned", "circular_accuracy"] == 0.25
    assert np.isnan(table.loc["ci-zero-shot", "circular_accuracy"])  # scored without rotations: said, not hidden
    spread = pos.seed_spread(runs).set_index("metric")
    assert spread.loc["accuracy", "seeds"] == "0, 1, 2" and spread.loc["accuracy", "recipe"] == "ci-seed0-fine-tuned"
    assert spread.loc["accuracy", "mean"] == pytest.approx(0.6) and spread.loc["accuracy", "sd"] == pytest.approx(0.1)
    assert (spread.loc["circular_accuracy", "min"], spread.loc["circular_accuracy", "max"]) == (0.15, 0.25)
    assert spread.loc["predicted_share_A", "mean"] == pytest.approx(0.6)
    assert len(pos.seed_spread(runs[runs["run_id"] != "ci-seed1-fine-tuned"])) == 4  # two seeds still a spread
    assert pos.seed_spread(runs[runs["run_id"].isin(["ci-seed0-fine-tuned", "ci-zero-shot"])]).empty


def test_majority_letter_and_scored_exactly():
    m = pos.majority_letter([0, 0, 1, 2, 3, 0, 2])
    assert (m["letter"], m["correct"], m["n"]) == ("A", 3, 7) and m["accuracy"] == pytest.approx(3 / 7)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(stats.wilson_interval(3, 7))
    assert pos.majority_letter(["C", "C", "B"])["letter"] == "C"
    assert not pos.scored_exactly(make_preds(["a", "b"], [True, False]))
    assert pos.scored_exactly(make_preds(["a", "b"], [True, False]).assign(credit=1.0))
