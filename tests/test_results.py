"""Run records: atomic writes, no secrets, and a round trip through load_runs."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from medcore import results
from medcore.results import (load_loss_history, load_predictions, load_run, load_runs, write_run_record)

FAKE_TOKEN = "hf_" + "abcdefghijklmnopqrstuvwxyz1234"


def _record(tmp_path, run_id="r1", **kw):
    config = {"name": run_id, "model": {"source": "random:tiny-gemma"}, "train": {"token_budget": 4096}}
    metrics = {"accuracy": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n": 100, "cost": {"qps": 12.5},
               "by_tier": pd.DataFrame({"tier": ["clinical"], "accuracy": [0.4]})}
    preds = pd.DataFrame({"id": ["a", "b"], "answer": [0, 1], "pred": [0, 2], "correct": [True, False],
                          "prob": [0.5, 0.3]})
    loss = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "eval_loss": 2.2}]
    kw.setdefault("extra", {"real_weights": False})
    return write_run_record(tmp_path, run_id, config, metrics, loss_history=loss, predictions=preds, **kw)


def test_round_trip(tmp_path):
    path = _record(tmp_path, "r1")
    _record(tmp_path, "r2", extra={"real_weights": True, "note": "second"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "environment.json", "loss_history.json",
                                                       "metrics.json", "predictions.parquet"]
    runs = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["r1", "r2"]
    assert list(runs["accuracy"]) == [0.4, 0.4]
    assert list(runs["cost.qps"]) == [12.5, 12.5]
    assert list(runs["config.model.source"]) == ["random:tiny-gemma"] * 2
    assert list(runs["env.real_weights"]) == [False, True]
    assert runs["by_tier"][0] == [{"tier": "clinical", "accuracy": 0.4}]
    preds = load_predictions(path)
    assert list(preds["pred"]) == [0, 2] and preds["correct"].dtype == bool
    assert list(load_loss_history(path)["loss"]) == [2.5, 2.0]
    env = load_run(path)["environment"]
    assert env["packages"]["torch"] and env["python"] and "device" in env
    assert load_runs(tmp_path / "missing").empty


def test_existing_record_needs_overwrite(tmp_path):
    _record(tmp_path, "r1")
    with pytest.raises(FileExistsError):
        _record(tmp_path, "r1")
    _record(tmp_path, "r1", overwrite=True, extra={"real_weights": True})
    assert load_runs(tmp_path)["env.real_weights"].tolist() == [True]
    assert [p.name for p in tmp_path.iterdir()] == ["r1"]
    with pytest.raises(ValueError):
        _record(tmp_path, "../escape")


def test_failure_mid_write_leaves_no_record(tmp_path, monkeypatch):
    calls = []
    real = results._write_json

    def failing(path, value):
        calls.append(path.name)
        if path.name == "metrics.json":
            raise OSError("disk full (simulated)")
        real(path, value)

    monkeypatch.setattr(results, "_write_json", failing)
    with pytest.raises(OSError, match="simulated"):
        _record(tmp_path, "r1")
    assert calls[-1] == "metrics.json"
    assert list(tmp_path.iterdir()) == []  # neither the record nor the temporary folder


def test_overwrite_failure_keeps_old_record(tmp_path, monkeypatch):
    _record(tmp_path, "r1")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        _record(tmp_path, "r1", overwrite=True, extra={"real_weights": True})
    assert load_runs(tmp_path)["env.real_weights"].tolist() == [False]


def test_killed_process_leaves_no_half_record(tmp_path):
    """A process killed (os._exit, no cleanup) mid-write leaves only a hidden temp folder the loaders skip."""
    script = textwrap.dedent(f"""
        import os
        from medcore import results
        real = results._write_json
        def dying(path, value):
            if path.name == "metrics.json":
                os._exit(9)
            real(path, value)
        results._write_json = dying
        results.write_run_record({str(tmp_path)!r}, "killed", {{"a": 1}}, {{"accuracy": 0.5}})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert "killed" not in names and all(n.startswith(".tmp-killed-") for n in names)
    assert load_runs(tmp_path).empty


def test_no_secrets_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-xyz")
    config = {"HF_TOKEN": FAKE_TOKEN, "token": "abc", "model": {"source": "hub:google/gemma-2b",
              "use_auth_token": True, "note": f"login with {FAKE_TOKEN}"}, "path": "/x/s3cr3t-value-xyz/y",
              "token_budget": 4096}
    preds = pd.DataFrame({"id": ["q1"], "text": [FAKE_TOKEN], "HF_TOKEN": ["x"]})
    path = write_run_record(tmp_path, "s", config, {"accuracy": 0.5, "prompt_tokens": 12},
                            predictions=preds, extra={"HUGGING_FACE_HUB_TOKEN": "y", "real_weights": True})
    text = "".join(p.read_text(errors="ignore") for p in path.glob("*.json"))
    text += path.joinpath("predictions.parquet").read_bytes().decode("latin-1")
    assert FAKE_TOKEN not in text and "s3cr3t-value-xyz" not in text
    assert "HF_TOKEN" not in text and "HUGGING_FACE_HUB_TOKEN" not in text and "use_auth_token" not in text
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["token_budget"] == 4096 and cfg["model"]["note"] == results.REDACTED and "token" not in cfg
    assert json.loads((path / "metrics.json").read_text())["prompt_tokens"] == 12
    assert load_predictions(path)["text"].tolist() == [results.REDACTED]
    assert json.loads((path / "environment.json").read_text())["real_weights"] is True


def test_json_is_strict(tmp_path):
    import numpy as np
    path = write_run_record(tmp_path, "n", {"seed": np.int64(3)}, {"accuracy": float("nan"), "ok": np.bool_(True)})
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics == {"accuracy": None, "ok": True}
    assert json.loads((path / "loss_history.json").read_text()) == []
    assert not os.path.exists(path / "predictions.parquet")


def test_run_note_from_the_environment_goes_into_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCORE_RUN_NOTE", "two runs shared each GPU")
    env = results.load_run(results.write_run_record(tmp_path, "noted", {}, {"accuracy": 0.5}))["environment"]
    assert env["run_note"] == "two runs shared each GPU"
    monkeypatch.delenv("MEDCORE_RUN_NOTE")
    assert "run_note" not in results.load_run(results.write_run_record(tmp_path, "plain", {}, {"accuracy": 0.5}))["environment"]


def test_a_commit_named_by_the_caller_wins_over_the_checkouts(monkeypatch):
    # a lent GPU machine gets a copy of the working tree whose .git may be stale
    monkeypatch.setenv("MEDCORE_GIT_COMMIT", "73adde9")
    info = results.environment_info()
    assert info["git_commit"] == "73adde9" and info["git_commit_source"] == "MEDCORE_GIT_COMMIT"
    monkeypatch.delenv("MEDCORE_GIT_COMMIT")
    assert results.environment_info()["git_commit"] != "73adde9"


def test_portable_paths_name_files_relative_to_the_repository(tmp_path):
    import tempfile

    from medcore.results import portable_paths

    root = tmp_path / "checkout"
    value = {"source": f"local:{root}/shared/dev.json", "cwd": str(root), "out": str(Path.home() / "out"),
             "cmd": [f"{tempfile.gettempdir()}/medcore-x/ckpt-1", "--steps", 8], "n": 3.5, "flag": True}
    assert portable_paths(value, root) == {"source": "local:shared/dev.json", "cwd": ".", "out": "~/out",
                                           "cmd": ["<tmp>/medcore-x/ckpt-1", "--steps", 8], "n": 3.5, "flag": True}


# ---- one schema and an explicit headline ------------------------------------------------------------------------

def test_a_record_carries_its_runconfig_and_the_schema_version(tmp_path):
    from medcore.config import RunConfig, load_profile

    cfg = load_profile("ci")
    run = load_run(write_run_record(tmp_path, "c", cfg, {"accuracy": 0.5}, extra={"options": {"steps": 3}}))
    assert RunConfig.from_dict(run["config"]).to_dict() == json.loads(json.dumps(cfg.to_dict()))
    assert run["environment"]["schema_version"] == results.SCHEMA_VERSION and run["environment"]["options"] == {"steps": 3}
    assert "headline" not in run["metrics"]


def test_the_headline_is_the_record_marked_so_not_the_last_name(tmp_path):
    for name, marked in (("a", False), ("b", True), ("c", False)):
        write_run_record(tmp_path, name, {}, {"accuracy": 0.5}, headline=marked)
    records = [(p, load_run(p)) for p in results.run_dirs(tmp_path)]
    assert results.headline(records)[0].name == "b" and load_run(tmp_path / "b")["metrics"]["headline"] is True
    assert results.headline(records[::2])[0].name == "c"  # none marked: the last by name, as before
    assert results.headline([]) is None


@pytest.mark.parametrize("folder, name", [("bench", "bench-gemma-2b-nvidia-h200-x-final"),
                                          ("bench-product", "bench-gemma-2b-h200-paper-profile")])
def test_the_committed_headlines_are_marked_and_are_the_ones_shown_before(folder, name):
    root = Path(__file__).resolve().parents[1] / "results" / folder
    records = [(p, load_run(p)) for p in results.run_dirs(root)]
    assert results.headline(records)[0].name == name == records[-1][0].name


def test_bench_headline_flag_marks_the_record():
    from medcore.bench import parse_args

    assert parse_args(["--headline", "--model", "random:tiny-gemma"])[1].headline is True
    assert parse_args(["--model", "random:tiny-gemma"])[1].headline is False
