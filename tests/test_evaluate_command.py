"""The evaluate command (medcore.flows.evaluate_command) on the tiny random-weight model: refuse before loading,
count what was cut or skipped, take a profile with flags on top."""
from __future__ import annotations

import json

import pytest

from medcore import data, quantize
from medcore.config import ConfigError, load_profile
from medcore.flows import evaluate_command as ec
from medcore.flows.cli import _run
from medcore.records import load_run


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (or data) fails the test: these refusals must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or data set was loaded before the refusal")
    monkeypatch.setattr(quantize, "load_quantized", forbidden)
    monkeypatch.setattr(data, "load_medmcqa_report", forbidden)


@pytest.mark.parametrize("limit", [0, -5])
def test_evaluate_refuses_a_limit_below_one_naming_the_flag(tmp_path, no_model, limit):
    with pytest.raises(ConfigError, match=rf"--limit {limit}: give a positive number of questions, or leave "
                                          r"--limit out"):
        ec.evaluate_model("random:tiny-gemma", source="mirror", limit=limit, results_dir=str(tmp_path))


def test_evaluate_checks_the_adapter_before_the_base_model_loads(tmp_path, no_model):
    with pytest.raises(FileNotFoundError, match=r"adapter .*nope: no adapter_config.json there"):
        ec.evaluate_model("random:tiny-gemma", source="mirror", adapter=str(tmp_path / "nope"),
                          results_dir=str(tmp_path))


def _original(i: int, question: str = "") -> dict:
    return {"id": f"q{i}", "question": question or f"Question {i}?", "opa": "alpha", "opb": "beta", "opc": "gamma",
            "opd": "delta", "cop": 1 + i % 4, "choice_type": "single", "exp": None, "subject_name": "Anatomy"}


def test_evaluate_skips_invalid_lines_on_request_and_reports_cuts_and_skips(tmp_path, capsys):
    lines = [json.dumps(_original(i, "A long history of fever and cough. " * 30 if i < 2 else "")) for i in range(6)]
    lines.insert(3, '{"question": "broken", ')
    (tmp_path / "dev.json").write_text("\n".join(lines) + "\n")
    source = f"local:{tmp_path / 'dev.json'}"
    with pytest.raises(ValueError, match="dev.json:4.*bad_json"):  # by default one bad line stops it, named
        ec.evaluate_model("random:tiny-gemma", source=source, results_dir=str(tmp_path / "r"))
    record = ec.evaluate_model("random:tiny-gemma", source=source, results_dir=str(tmp_path / "r"),
                               on_invalid="skip", batch_size=4)
    out = capsys.readouterr().out
    run = load_run(record)
    assert run["metrics"]["n"] == 6 and run["metrics"]["truncated"] == 2 and run["config"]["data"]["on_invalid"] == "skip"
    assert "2 of 6 questions cut to fit data.max_length=512 tokens" in out
    assert "1 invalid records skipped (bad_json: 1)" in out


def test_evaluate_takes_a_profile_and_set_with_flags_on_top_and_leaves_the_config_alone(tmp_path, medmcqa_dir):
    base = load_profile("ci")
    before = base.to_dict()
    record = ec.evaluate_model(limit=8, precision="bf16", results_dir=str(tmp_path), run_id="profiled", base=base)
    assert base.to_dict() == before  # evaluate works on a copy
    cfg = load_run(record)["config"]
    assert cfg["model"]["source"] == "random:tiny-gemma" and cfg["quant"]["precision"] == "bf16"
    assert cfg["data"]["max_length"] == 640 and cfg["name"] == "profiled"  # the profile's, where no flag is given
    assert _run(["evaluate", "--profile", "ci", "--set", "eval.batch_size=4", "--precision", "bf16", "--limit", "8",
                 "--results-dir", str(tmp_path), "--run-id", "cli"]) == 0
    assert load_run(tmp_path / "cli")["config"]["eval"]["batch_size"] == 4
