"""The canonical MedMCQA record and the checks that admit a row to it or refuse it.

Every source's rows become records with :data:`CANONICAL_FEATURES` through :func:`canonical_record`, which names the
first thing wrong with a row (an :class:`InvalidRecordError` with file:line or source#row, id and reason).
:func:`collect_records` raises on the first invalid record or skips and counts it in a :class:`LoadReport`, derives
missing ids, refuses duplicate ones and builds the ``datasets.Dataset``.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
from typing import Iterable

import datasets

from medcore.subjects import SUBJECTS

CANONICAL_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "question": datasets.Value("string"),
    "options": datasets.Sequence(datasets.Value("string"), length=4),
    "answer": datasets.Value("int32"),  # 0-3; None where the split has no key
    "subject": datasets.Value("string"),
    "topic": datasets.Value("string"),
    "choice_type": datasets.Value("string"),  # "single" | "multi" | None
    "explanation": datasets.Value("string"),
})
KEYLESS_SPLITS = ("test",)


class InvalidRecordError(ValueError):
    """A record breaks the schema; the message names where (file:line or source#row), the id and the reason."""

    def __init__(self, where: str, reason: str, detail: str, record_id: str | None = None):
        self.where, self.reason, self.record_id = where, reason, record_id
        super().__init__(f"{where}{f' (id {record_id})' if record_id else ''}: {reason}: {detail}")


@dataclasses.dataclass
class LoadReport:
    """What loading kept and dropped: ``skipped`` counts by reason, ``examples`` the first few messages."""
    source: str
    split: str
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        why = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common()) or "none"
        return f"{self.source} [{self.split}]: kept {self.kept}, skipped {sum(self.skipped.values())} ({why})"


def derive_id(question: str, options: Iterable[str]) -> str:
    """Stable id: ``sb-`` + sha1 of lower-cased, whitespace-collapsed question and options joined by ``||``."""
    norm = [re.sub(r"\s+", " ", s.lower()).strip() for s in (question, *options)]
    return "sb-" + hashlib.sha1("||".join(norm).encode("utf-8")).hexdigest()[:12]


def canonical_record(where: str, split: str, rid, question, options: list, answer: int | None, error: str | None,
                     subject=None, topic=None, choice_type=None, explanation=None) -> dict | InvalidRecordError:
    """One canonical record, or the first thing wrong with it. ``id`` None is derived later
    (:func:`collect_records`); ``error`` is a source's own "reason: detail" about the answer, or None."""
    rid = rid if isinstance(rid, str) and rid else None
    subject = subject or "Unknown"
    problems = [
        (not isinstance(question, str) or not question.strip(), "empty_question: the question is missing or empty"),
        *((not isinstance(o, str) or not o.strip(), f"missing_option: option {x} is missing or empty")
          for x, o in zip("ABCD", options)),
        (error, error),
        (answer is None and split not in KEYLESS_SPLITS, f"missing_answer: no answer key in split {split!r}"),
        (subject not in SUBJECTS, f"unknown_subject: {subject!r} is not one of the 21 MedMCQA subjects"),
        (choice_type not in (None, "single", "multi"), f"bad_choice_type: {choice_type!r} is not single/multi"),
    ]
    for failed, message in problems:
        if failed:
            reason, _, detail = message.partition(": ")
            return InvalidRecordError(where, reason, detail, rid)
    text = lambda v: v if isinstance(v, str) and v else None  # noqa: E731
    return {"id": rid, "question": question, "options": list(options), "answer": answer, "subject": subject,
            "topic": text(topic), "choice_type": choice_type, "explanation": text(explanation)}


def collect_records(records, source: str, split: str, on_invalid: str, limit: int | None
                    ) -> tuple[datasets.Dataset, LoadReport]:
    """(where, record or error) pairs -> the Dataset of the valid ones and a report of the rest."""
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid={on_invalid!r}: use 'raise' or 'skip'")
    report, rows, seen = LoadReport(source, split), [], set()
    for where, rec in records:
        if isinstance(rec, dict) and rec["id"] is None:  # derived: near-duplicate questions get a suffix
            base = rec["id"] = derive_id(rec["question"], rec["options"])
            n = 1
            while rec["id"] in seen:
                n += 1
                rec["id"] = f"{base}-{n}"
        elif isinstance(rec, dict) and rec["id"] in seen:
            rec = InvalidRecordError(where, "duplicate_id", "the id occurs earlier in the source", rec["id"])
        if isinstance(rec, InvalidRecordError):
            if on_invalid == "raise":
                raise rec
            report.skipped[rec.reason] += 1
            report.examples += [str(rec)][: 5 - len(report.examples)]
            continue
        seen.add(rec["id"])
        rows.append(rec)
        if limit is not None and len(rows) >= limit:
            break
    report.kept = len(rows)
    if not rows:  # an empty or wholly invalid file would otherwise fail later, far from its cause
        raise ValueError(f"no valid MedMCQA records in {report}" + (f"; first: {report.examples[0]}"
                                                                    if report.examples else ""))
    info = datasets.DatasetInfo(description=f"MedMCQA {split} from {source}", features=CANONICAL_FEATURES)
    return datasets.Dataset.from_list(rows, features=CANONICAL_FEATURES, info=info, split=split), report


def require_answers(ds: datasets.Dataset, purpose: str = "scoring") -> datasets.Dataset:
    """Return ``ds`` if every record has an answer key, else raise ValueError naming the split."""
    missing = sum(a is None for a in ds["answer"])
    if missing:
        raise ValueError(f"split {str(ds.split or '?')!r} has no answer key for {missing} of {len(ds)} records; "
                         f"{purpose} needs one")
    return ds
