"""The study steps (medcore.flows.workflows) on the tiny random-weight model and the shared MedMCQA files: seconds each."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from medcore.config import ConfigError, load_profile
from medcore.flows import workflows as wf
from medcore.flows.train_folder import prepare_output_dir
from medcore.models import load_tokenizer
from medcore.records import load_predictions, load_run


@pytest.fixture
def cfg(tmp_path, medmcqa_dir):
    return load_profile("ci", [f"data.source=local:{medmcqa_dir / 'dev.json'}", f"results_dir={tmp_path / 'results'}"])


def test_study_data_splits_are_disjoint_and_sized(cfg):
    split = wf.study_data(cfg)
    train, evaluation = split  # unpacks like a pair
    assert len(train) == cfg.data.train_size and len(evaluation) == cfg.data.eval_limit
    assert not set(train["id"]) & set(evaluation["id"])
    assert split.dropped == {"train": 0, "eval": 0} and "disjoint rest" in split.sources["eval"]
    assert wf.study_data(cfg).eval["id"] == evaluation["id"]  # the same questions every time (seeded)


def test_study_data_with_a_tokenizer_truncates_and_drops_only_what_cannot_fit(cfg):
    tokenizer = load_tokenizer(cfg.model.source)  # byte-level: long choices really do not fit
    tight = load_profile("ci", [f"data.source={cfg.data.source}", "data.max_length=200"])
    split = wf.study_data(tight, tokenizer)
    assert split.dropped["eval"] > 0 and len(split.eval) == tight.data.eval_limit
    from medcore.prompts import encode_prompt

    cut = [encode_prompt(tokenizer, r["question"], r["options"], 200)[1] for r in split.eval]
    assert any(cut)  # longer questions are kept, their question text cut


def test_study_data_with_a_training_source(cfg, medmcqa_dir):
    two = load_profile("ci", [f"data.source=local:{medmcqa_dir / 'dev.json'}",
                              f"data.train_source=local:{medmcqa_dir / 'train_sample.jsonl'}", "data.train_size=30"])
    split = wf.study_data(two)
    assert len(split.train) == 30 and len(split.eval) == two.data.eval_limit
    assert "train_sample" in split.sources["train"] and not set(split.train["id"]) & set(split.eval["id"])


def test_score_and_record_writes_a_complete_record(cfg):
    _, evaluation = wf.study_data(cfg)
    questions = evaluation.select(range(8))
    model, tokenizer = wf.load(cfg)
    record = wf.score_and_record(cfg, model, tokenizer, questions, "ci-zero-shot", "zero-shot")
    run = load_run(record)
    m = run["metrics"]
    assert record.name == "ci-zero-shot" and m["role"] == "zero-shot" and m["precision"] == "nf4+dq"
    assert m["n"] == 8 and 0 <= m["ci_low"] <= m["accuracy"] <= m["ci_high"] <= 1
    assert m["real_weights"] is False and run["environment"]["real_weights"] is False
    assert m["footprint_bytes"] > 0 and m["cost"]["latency_ms_median"] > 0 and m["cost"]["best_qps"] > 0
    preds = load_predictions(record)
    assert preds["id"].tolist() == questions["id"] and set(preds["pred"]) <= {0, 1, 2, 3}
    # a rerun with the same id replaces the record
    again = wf.score_and_record(cfg, model, tokenizer, questions.select(range(4)), "ci-zero-shot", "zero-shot",
                                cost=False)
    assert again == record and load_run(record)["metrics"]["n"] == 4 and "cost" not in load_run(record)["metrics"]


def test_footprints_record_sizes_errors_and_latency(cfg):
    _, evaluation = wf.study_data(cfg)
    record = wf.footprints(cfg, ["bf16", "nf4", "nf4+dq"], latency_sample=evaluation.select(range(4)), disk=False)
    rows = pd.DataFrame(load_run(record)["metrics"]["footprint"]).set_index("precision")
    assert record.name == "ci-footprint" and (rows["status"] == "ok").all()
    assert rows.loc["nf4", "total_bytes"] < rows.loc["bf16", "total_bytes"]
    assert rows.loc["bf16", "quant_constant_bytes"] == 0 < rows.loc["nf4+dq", "quant_constant_bytes"]
    assert (rows["latency_ms"] > 0).all() and (rows["qps"] > 0).all()
    errors = load_predictions(record)
    assert set(errors["precision"]) == {"nf4", "nf4+dq"} and errors["error"].between(0, 1).all()


def test_data_record_and_before_after_without_adapter(cfg, tmp_path):
    split = wf.study_data(cfg)
    record = wf.data_record(cfg, split, {"counts": pd.DataFrame({"split": ["train"], "n": [48]})})
    ids = load_predictions(record)
    assert ids.groupby("split").size().to_dict() == {"eval": 48, "train": 48}
    assert json.loads((record / "metrics.json").read_text())["counts"] == [{"split": "train", "n": 48}]
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        wf.before_after(cfg, tmp_path / "no-adapter", split)


# ---- training folders through finetune: refuse before loading, resume only the same run ---------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (or data) fails the test: these refusals must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or data set was loaded before the refusal")
    monkeypatch.setattr(wf.quantize, "load_quantized", forbidden)
    monkeypatch.setattr(wf, "study_data", forbidden)
    monkeypatch.setattr(wf.data, "load_medmcqa_report", forbidden)


def test_finetune_refuses_a_folder_medcore_did_not_write(cfg, tmp_path, no_model):
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "notes" / "a.txt").write_text("more")
    with pytest.raises(ConfigError, match=r"output folder .*mine is not empty \(notes, thesis.tex\) and is not a "
                                          r"medcore run .*pick a new or empty --output-dir"):
        wf.finetune(cfg, output_dir=mine)
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "notes" / "a.txt").is_file()


def test_resume_with_changed_settings_names_each_one_and_trains_nothing(cfg, tmp_path):
    short = load_profile("ci", [f"data.source={cfg.data.source}", f"results_dir={tmp_path / 'results'}",
                                "data.train_size=8", "data.eval_limit=8", "train.max_steps=2", "train.save_steps=1"])
    out = tmp_path / "out"
    wf.finetune(short, output_dir=out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    changed = load_profile("ci", [f"data.source={cfg.data.source}", "data.train_size=8", "data.eval_limit=8",
                                  "train.max_steps=2", "train.save_steps=1", "train.learning_rate=1e-3", "lora.r=8",
                                  f"results_dir={tmp_path / 'elsewhere'}"])  # the record's folder may change
    with pytest.raises(ConfigError) as err:
        wf.finetune(changed, output_dir=out, resume=True)
    message = str(err.value)
    assert message.startswith(f"--resume: these settings differ from the run in {out}: ")
    assert "lora.r: 4 -> 8; train.learning_rate: 0.0002 -> 0.001." in message and "results_dir" not in message
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    same = load_profile("ci", [f"data.source={cfg.data.source}", "data.train_size=8", "data.eval_limit=8",
                               "train.max_steps=2", "train.save_steps=1", f"results_dir={tmp_path / 'elsewhere'}"])
    assert prepare_output_dir(same, out, resume=True) == out  # only where the record goes differs: accepted
