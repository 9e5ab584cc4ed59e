"""MedMCQA's 21 subjects and what is done by subject: their curriculum tiers, subject-stratified subsets, splits and
k folds of a loaded split, and the per-subject and per-tier summaries that ``python -m medcore data`` prints."""
from __future__ import annotations

from typing import Iterator

import datasets
import numpy as np
import pandas as pd

SUBJECTS = (
    "Anaesthesia", "Anatomy", "Biochemistry", "Dental", "ENT", "Forensic Medicine", "Gynaecology & Obstetrics",
    "Medicine", "Microbiology", "Ophthalmology", "Orthopaedics", "Pathology", "Pediatrics", "Pharmacology",
    "Physiology", "Psychiatry", "Radiology", "Skin", "Social & Preventive Medicine", "Surgery", "Unknown",
)
TIERS = ("pre-clinical", "para-clinical", "clinical", "unknown")
_PRE = {"Anatomy", "Physiology", "Biochemistry"}
_PARA = {"Pathology", "Microbiology", "Pharmacology", "Forensic Medicine", "Social & Preventive Medicine"}
SUBJECT_TIERS = {s: "unknown" if s == "Unknown" else "pre-clinical" if s in _PRE else
                 "para-clinical" if s in _PARA else "clinical" for s in SUBJECTS}
"""Subject -> phase of the Indian MBBS curriculum that teaches it (1st year pre-clinical, 2nd para-clinical, then
clinical). These tiers stand in for the seed paper's "basic / intermediate / advanced" breakdown, which it does
not define further; "Unknown" (no subject in the data) gets its own tier."""


def subject_tier(subject: str) -> str:
    if subject not in SUBJECT_TIERS:
        raise ValueError(f"{subject!r} is not one of the 21 MedMCQA subjects")
    return SUBJECT_TIERS[subject]


def add_tier(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.add_column("tier", [subject_tier(s) for s in ds["subject"]])


# ---- stratified subsets, splits and folds -------------------------------------------------------------------

def _shuffled_groups(ds: datasets.Dataset, seed: int, by: str) -> list[np.ndarray]:
    """Row indices per stratum (strata in sorted order), each shuffled by one seeded generator."""
    rng, keys = np.random.default_rng(seed), np.asarray(ds[by], dtype=object)
    return [rng.permutation(np.flatnonzero(keys == k)) for k in sorted(set(keys.tolist()))]


def _take_stratified(groups: list[np.ndarray], n: int) -> np.ndarray:
    """n indices, each stratum contributing its proportional share (largest remainder)."""
    sizes = np.array([len(g) for g in groups])
    quota = sizes * n / sizes.sum()
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    return np.sort(np.concatenate([g[:t] for g, t in zip(groups, take)]))


def stratified_subset(ds: datasets.Dataset, n: int, seed: int = 0, by: str = "subject") -> datasets.Dataset:
    """n records with the strata in proportion; rows keep their original order."""
    if not 0 <= n <= len(ds):
        raise ValueError(f"n={n} must be between 0 and {len(ds)}")
    return ds.select(_take_stratified(_shuffled_groups(ds, seed, by), n))


def stratified_split(ds: datasets.Dataset, test_fraction: float | None = None, train_size: int | None = None,
                     seed: int = 0, by: str = "subject") -> tuple[datasets.Dataset, datasets.Dataset]:
    """Disjoint (train, eval) covering ``ds``: give ``test_fraction`` or ``train_size`` (a count of records)."""
    if (test_fraction is None) == (train_size is None):
        raise ValueError("give exactly one of test_fraction and train_size")
    if train_size is not None and not 0 < train_size < len(ds):
        raise ValueError(f"train_size={train_size} must be between 1 and {len(ds) - 1}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be between 0 and 1")
    n_train = train_size if train_size is not None else len(ds) - round(test_fraction * len(ds))
    train_idx = _take_stratified(_shuffled_groups(ds, seed, by), n_train)
    return ds.select(train_idx), ds.select(np.setdiff1d(np.arange(len(ds)), train_idx))


def kfold_splits(ds: datasets.Dataset, k: int, seed: int = 0, by: str = "subject"
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, test_idx) pairs; strata are dealt round-robin, so every record is in exactly one test fold."""
    if not 2 <= k <= len(ds):
        raise ValueError(f"k={k} must be between 2 and {len(ds)}")
    order = np.concatenate(_shuffled_groups(ds, seed, by))
    fold = np.empty(len(ds), dtype=int)
    fold[order] = np.arange(len(ds)) % k
    for i in range(k):
        yield np.flatnonzero(fold != i), np.flatnonzero(fold == i)


# ---- summaries ----------------------------------------------------------------------------------------------

def summarize(ds: datasets.Dataset) -> pd.DataFrame:
    """Records per subject with its tier and share, ordered by tier then subject."""
    counts = pd.Series(ds["subject"]).value_counts()
    df = pd.DataFrame({"subject": counts.index, "n": counts.to_numpy()})
    df["tier"] = df["subject"].map(subject_tier)
    df["share"] = df["n"] / df["n"].sum()
    df["tier"] = pd.Categorical(df["tier"], categories=TIERS, ordered=True)
    return df.sort_values(["tier", "subject"])[["tier", "subject", "n", "share"]].reset_index(drop=True)


def tier_summary(ds: datasets.Dataset) -> pd.DataFrame:
    """Records and subjects per tier."""
    df = summarize(ds).groupby("tier", observed=True).agg(subjects=("subject", "size"), n=("n", "sum"))
    df["share"] = df["n"] / df["n"].sum()
    return df.reset_index()


def data_summary_text(ds: datasets.Dataset) -> str:
    """What ``python -m medcore data`` prints: size, answer key balance, subjects and tiers."""
    answers = [a for a in ds["answer"] if a is not None]
    key = (", ".join(f"{'ABCD'[i]} {answers.count(i)}" for i in range(4)) if answers else "none")
    lines = [f"{ds.info.description or 'MedMCQA'}: {len(ds)} records, {len(set(ds['subject']))} "
             f"subjects; answer key: {key} ({len(ds) - len(answers)} without)", "",
             summarize(ds).to_string(index=False, float_format="{:.3f}".format), "",
             tier_summary(ds).to_string(index=False, float_format="{:.3f}".format)]
    return "\n".join(lines)
