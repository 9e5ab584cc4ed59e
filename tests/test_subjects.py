"""subjects.py: subject tiers, stratified subsets, splits and k folds, summaries (on the real dev.json)."""
import collections

import numpy as np
import pandas as pd
import pytest

from medcore import subjects


def test_subject_tiers(dev_ds):
    assert set(subjects.SUBJECT_TIERS) == set(subjects.SUBJECTS)
    assert collections.Counter(subjects.SUBJECT_TIERS.values()) == {"clinical": 12, "para-clinical": 5,
                                                                    "pre-clinical": 3, "unknown": 1}
    assert subjects.subject_tier("Anatomy") == "pre-clinical" and subjects.subject_tier("Pathology") == "para-clinical"
    with pytest.raises(ValueError, match="Cardiology"):
        subjects.subject_tier("Cardiology")
    tiered = subjects.add_tier(dev_ds.select(range(20)))
    assert tiered["tier"] == [subjects.SUBJECT_TIERS[s] for s in tiered["subject"]]
    tiers = subjects.tier_summary(dev_ds).set_index("tier")["n"].to_dict()
    assert tiers == {"pre-clinical": 576, "para-clinical": 898, "clinical": 2707, "unknown": 2}
    text = subjects.data_summary_text(dev_ds)
    assert "4183 records, 21 subjects" in text and "Social & Preventive Medicine" in text


def _shares(ds):
    return pd.Series(ds["subject"]).value_counts()


def test_stratified_split(dev_ds):
    train, ev = subjects.stratified_split(dev_ds, test_fraction=0.2, seed=1)
    assert len(ev) == round(0.2 * 4183) and len(train) + len(ev) == 4183
    assert not set(train["id"]) & set(ev["id"]) and set(train["id"]) | set(ev["id"]) == set(dev_ds["id"])
    expected = _shares(dev_ds) * len(ev) / len(dev_ds)
    assert ((_shares(ev).reindex(expected.index, fill_value=0) - expected).abs() < 1).all()
    again, _ = subjects.stratified_split(dev_ds, test_fraction=0.2, seed=1)
    other, _ = subjects.stratified_split(dev_ds, test_fraction=0.2, seed=2)
    assert again["id"] == train["id"] and other["id"] != train["id"]
    train400, rest = subjects.stratified_split(dev_ds, train_size=400, seed=0)
    assert len(train400) == 400 and len(rest) == 3783
    with pytest.raises(ValueError, match="exactly one"):
        subjects.stratified_split(dev_ds, test_fraction=0.2, train_size=400)


def test_stratified_subset(dev_ds):
    sub = subjects.stratified_subset(dev_ds, 100, seed=3)
    assert len(sub) == 100 and len(set(sub["id"])) == 100
    assert _shares(sub)["Dental"] == round(1318 / 4183 * 100)
    assert sub["id"] == subjects.stratified_subset(dev_ds, 100, seed=3)["id"]


def test_kfold_each_record_in_one_test_fold(dev_ds):
    folds = list(subjects.kfold_splits(dev_ds, 5, seed=0))
    tests = np.concatenate([t for _, t in folds])
    assert len(folds) == 5 and sorted(tests.tolist()) == list(range(4183))
    for train_idx, test_idx in folds:
        assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == 4183
    subject_of = np.asarray(dev_ds["subject"])
    for s in subjects.SUBJECTS:
        per_fold = [int((subject_of[t] == s).sum()) for _, t in folds]
        assert max(per_fold) - min(per_fold) <= 1, s
