"""Notebook 01's tables of a run's questions (a ``workflows.StudyData``): the splits, counts per category, and
prompt lengths in tokens."""
from __future__ import annotations

import pandas as pd


def split_overview(split) -> pd.DataFrame:
    """One row per split of a ``workflows.StudyData``: questions, subjects, single/multi, dropped, source."""
    rows = []
    for name, ds in (("train", split.train), ("eval", split.eval)):
        kinds = pd.Series(ds["choice_type"]).fillna("unknown").value_counts()
        rows.append({"split": name, "questions": len(ds), "subjects": len(set(ds["subject"])),
                     "single": int(kinds.get("single", 0)), "multi": int(kinds.get("multi", 0)),
                     "choice type unknown": int(kinds.get("unknown", 0)),
                     "dropped (choices too long)": split.dropped[name], "source": split.sources.get(name, "")})
    return pd.DataFrame(rows)


def category_counts(split, column: str) -> pd.DataFrame:
    """Counts per ``column`` (subject, tier, choice_type, answer letter) and split, with the share in the split."""
    from medcore.subjects import subject_tier

    parts = []
    for name, ds in (("train", split.train), ("eval", split.eval)):
        values = ([subject_tier(s) for s in ds["subject"]] if column == "tier" else
                  ["ABCD"[a] for a in ds["answer"]] if column == "answer" else ds[column])
        counts = pd.Series(values, dtype=object).fillna("unknown").value_counts()
        parts.append(pd.DataFrame({column: counts.index, "split": name, "count": counts.to_numpy(),
                                   "share": counts.to_numpy() / max(len(ds), 1)}))
    return pd.concat(parts, ignore_index=True)


def prompt_lengths(split, tokenizer, max_length: int) -> pd.DataFrame:
    """Scoring-prompt length in tokens per question (split, id, length, truncated to fit ``max_length``)."""
    from medcore.prompts import encode_for_scoring

    rows = [{"split": name, "id": r["id"], **{k: v for k, v in encode_for_scoring(r, tokenizer, max_length).items()
                                             if k in ("length", "truncated")}}
            for name, ds in (("train", split.train), ("eval", split.eval)) for r in ds]
    return pd.DataFrame(rows)


def length_summary(lengths: pd.DataFrame) -> pd.DataFrame:
    """Mean, median, p90, p99, max and truncated count of prompt lengths per split."""
    g = lengths.groupby("split", sort=False)
    out = g["length"].describe(percentiles=[0.5, 0.9, 0.99])[["count", "mean", "50%", "90%", "99%", "max"]]
    out["truncated"] = g["truncated"].sum()
    return out.rename(columns={"50%": "median", "90%": "p90", "99%": "p99"}).reset_index()
