"""schema.py: the canonical record; bad records named by file and line, or skipped and counted (files written by
hand, and records built directly)."""
import collections
import json
import logging

import pytest

from medcore import data, schema
from medcore.data import load_medmcqa, load_medmcqa_report
from medcore.schema import InvalidRecordError
from tests.conftest import _raw, _write_jsonl
from tests.test_data import _record, _write


def test_derive_id_matches_shared_train_files(medmcqa_dir):
    rec = next(json.loads(line) for line in (medmcqa_dir / "train_sample.jsonl").open()
               if json.loads(line)["id"].startswith("sb-"))
    assert schema.derive_id(rec["question"], [rec[k] for k in ("opa", "opb", "opc", "opd")]) == rec["id"]


# ---- malformed files ----------------------------------------------------------------------------------------

BAD = {  # name: (line 2 of a 4-line file, reason)
    "bad_json": (b'{"question": "x", "opa": ', "bad_json"),
    "missing_option": ({k: v for k, v in _record(9).items() if k != "opd"}, "missing_option"),
    "empty_question": (_record(9, question="  "), "empty_question"),
    "cop_5": (_record(9, cop=5), "answer_out_of_range"),
    "cop_0": (_record(9, cop=0), "answer_out_of_range"),
    "cop_a": (_record(9, cop="a"), "answer_not_int"),
    "no_cop": (_record(9, cop=None), "missing_answer"),
    "duplicate_id": (_record(0), "duplicate_id"),
    "non_utf8": (b'{"question": "caf\xe9 \xff", "opa": "a"}', "bad_utf8"),
    "unknown_subject": (_record(9, subject_name="Cardiology"), "unknown_subject"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_record_raises_and_skips(tmp_path, case):
    line, reason = BAD[case]
    path = _write(tmp_path / "dev.json", [_record(0), line, _record(1), _record(2)])
    with pytest.raises(InvalidRecordError) as err:
        load_medmcqa(f"local:{tmp_path}")
    assert err.value.reason == reason and err.value.where == f"{path}:2" and f"{path}:2" in str(err.value)
    if isinstance(line, dict):
        assert f"(id {line['id']})" in str(err.value)
    ds, report = load_medmcqa_report(f"local:{tmp_path}", on_invalid="skip")
    assert ds["id"] == ["id-0", "id-1", "id-2"] and report.skipped == {reason: 1} and report.kept == 3


def test_skip_counts_every_reason_and_warns(tmp_path, caplog):
    lines = [_record(0)] + [line for line, _ in BAD.values()] + [_record(1)]
    _write(tmp_path / "mixed.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="medcore.data"):
        ds = load_medmcqa(f"local:{tmp_path / 'mixed.jsonl'}", on_invalid="skip")
    assert ds["id"] == ["id-0", "id-1"]
    assert "skipped 10" in caplog.text and "unknown_subject: 1" in caplog.text
    _, report = load_medmcqa_report(f"local:{tmp_path / 'mixed.jsonl'}")
    assert report.skipped == collections.Counter(r for _, r in BAD.values())
    with pytest.raises(ValueError, match="on_invalid"):
        load_medmcqa(f"local:{tmp_path / 'mixed.jsonl'}", on_invalid="ignore")


def test_keyless_test_split_and_require_answers(tmp_path):
    _write(tmp_path / "test.json", [{k: v for k, v in _record(i).items() if k != "cop"} for i in range(3)])
    test = load_medmcqa(f"local:{tmp_path}", "test")
    assert test["answer"] == [None] * 3
    with pytest.raises(ValueError, match="split 'test' has no answer key .*; scoring needs one"):
        schema.require_answers(test)
    _write(tmp_path / "dev.json", [_record(i) for i in range(3)])
    keyed = load_medmcqa(f"local:{tmp_path}")
    assert schema.require_answers(keyed, "training") is keyed


# ---- bad records built by hand: each named by file and line, or skipped and counted -----------------------

MORE_BAD = {  # cases beyond BAD above: (line 2 of a 4-line file, reason)
    "no_question_key": ({k: v for k, v in _raw(9).items() if k != "question"}, "empty_question"),
    "no_options_at_all": ({k: v for k, v in _raw(9).items() if k not in ("opa", "opb", "opc", "opd")},
                          "missing_option"),
    "empty_option": (_raw(9, opc=""), "missing_option"),
    "option_not_text": (_raw(9, opb=["x"]), "missing_option"),
    "cop_float": (_raw(9, cop=2.5), "answer_not_int"),
    "cop_bool": (_raw(9, cop=True), "answer_not_int"),
    "cop_string": (_raw(9, cop="2"), "answer_not_int"),
    "cop_negative": (_raw(9, cop=-3), "answer_out_of_range"),
    "json_array": (b"[1, 2, 3]", "bad_json"),
    "truncated_line": (json.dumps(_raw(9))[:40].encode(), "bad_json"),
    "latin1_bytes": (json.dumps(_raw(9)).encode().replace(b"Q9", b"Q\xe99"), "bad_utf8"),
    "subject_typo": (_raw(9, subject_name="Anatomyy"), "unknown_subject"),
    "duplicate_id": (_raw(2, question="another question"), "duplicate_id"),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", sorted(MORE_BAD))
def test_bad_record_is_named_or_skipped_and_counted(tmp_path, case):
    line, reason = MORE_BAD[case]
    lines = [_raw(0), line, _raw(1), _raw(2)] if case != "duplicate_id" else [_raw(0), _raw(2), _raw(1), line]
    bad_line = 2 if case != "duplicate_id" else 4
    path = _write_jsonl(tmp_path / "dev.json", lines)
    with pytest.raises(schema.InvalidRecordError) as err:
        data.load_medmcqa(f"local:{path}")
    assert err.value.reason == reason and f"{path}:{bad_line}" in str(err.value) and reason in str(err.value)
    ds, report = data.load_medmcqa_report(f"local:{path}", on_invalid="skip")
    assert len(ds) == 3 and report.skipped == {reason: 1} and f"skipped 1 ({reason}: 1)" in str(report)


@pytest.mark.usefixtures("one_thread")
def test_file_with_no_valid_record_is_a_clear_error(tmp_path):
    path = _write_jsonl(tmp_path / "dev.json", [b"not json", _raw(1, cop=9)])
    with pytest.raises(ValueError, match=r"no valid MedMCQA records .*skipped 2"):
        data.load_medmcqa(f"local:{path}", on_invalid="skip")


# ---- the record and the collection, directly --------------------------------------------------------------------

OPTIONS = ["a", "b", "c", "d"]


def test_canonical_record_names_the_first_problem():
    ok = schema.canonical_record("f:1", "validation", "q1", "Q?", OPTIONS, 2, None, choice_type="multi", topic="")
    assert ok == {"id": "q1", "question": "Q?", "options": OPTIONS, "answer": 2, "subject": "Unknown",
                  "topic": None, "choice_type": "multi", "explanation": None}
    bad = schema.canonical_record("f:2", "validation", "q2", "Q?", OPTIONS, 0, None, choice_type="both")
    assert isinstance(bad, InvalidRecordError) and bad.reason == "bad_choice_type" and bad.where == "f:2"
    assert schema.canonical_record("f:3", "test", None, "Q?", OPTIONS, None, None)["answer"] is None


def test_collect_records_derives_ids_and_stops_at_the_limit():
    rows = [(f"f:{i}", schema.canonical_record(f"f:{i}", "validation", None, "Same question?", OPTIONS, 0, None))
            for i in range(3)]
    base = schema.derive_id("Same question?", OPTIONS)
    ds, report = schema.collect_records(rows, "here", "validation", "raise", None)
    assert ds["id"] == [base, f"{base}-2", f"{base}-3"] and report.kept == 3
    assert ds.features == schema.CANONICAL_FEATURES and ds.info.description == "MedMCQA validation from here"
    rows = [(f"f:{i}", schema.canonical_record(f"f:{i}", "validation", f"q{i}", "Q?", OPTIONS, 0, None))
            for i in range(3)]
    assert len(schema.collect_records(rows, "here", "validation", "raise", 2)[0]) == 2
