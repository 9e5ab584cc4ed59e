"""Run records: atomic writes, no secrets, and a round trip through load_runs. The interruption and secret tests at
the end train through the command line (``python -m medcore train``) in subprocesses, so a kill is a real kill and
the token is really in the environment."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medcore import records
from medcore.records import (load_loss_history, load_predictions, load_run, load_runs, write_run_record)
from tests.conftest import (CANARY_TOKEN, SETS, _complete_checkpoint, _env, _raw, _run, _train_cmd,
                            _train_until_first_checkpoint, _write_jsonl)

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
    real = records._write_json

    def failing(path, value):
        calls.append(path.name)
        if path.name == "metrics.json":
            raise OSError("disk full (simulated)")
        real(path, value)

    monkeypatch.setattr(records, "_write_json", failing)
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
        from medcore import records
        real = records._write_json
        def dying(path, value):
            if path.name == "metrics.json":
                os._exit(9)
            real(path, value)
        records._write_json = dying
        records.write_run_record({str(tmp_path)!r}, "killed", {{"a": 1}}, {{"accuracy": 0.5}})
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
    assert cfg["token_budget"] == 4096 and cfg["model"]["note"] == records.REDACTED and "token" not in cfg
    assert json.loads((path / "metrics.json").read_text())["prompt_tokens"] == 12
    assert load_predictions(path)["text"].tolist() == [records.REDACTED]
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
    env = records.load_run(records.write_run_record(tmp_path, "noted", {}, {"accuracy": 0.5}))["environment"]
    assert env["run_note"] == "two runs shared each GPU"
    monkeypatch.delenv("MEDCORE_RUN_NOTE")
    assert "run_note" not in records.load_run(records.write_run_record(tmp_path, "plain", {}, {"accuracy": 0.5}))["environment"]


def test_a_commit_named_by_the_caller_wins_over_the_checkouts(monkeypatch):
    # a lent GPU machine gets a copy of the working tree whose .git may be stale
    monkeypatch.setenv("MEDCORE_GIT_COMMIT", "73adde9")
    info = records.environment_info()
    assert info["git_commit"] == "73adde9" and info["git_commit_source"] == "MEDCORE_GIT_COMMIT"
    monkeypatch.delenv("MEDCORE_GIT_COMMIT")
    assert records.environment_info()["git_commit"] != "73adde9"


def test_portable_paths_name_files_relative_to_the_repository(tmp_path):
    import tempfile

    from medcore.records import portable_paths

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
    assert run["environment"]["schema_version"] == records.SCHEMA_VERSION and run["environment"]["options"] == {"steps": 3}
    assert "headline" not in run["metrics"]


def test_the_headline_is_the_record_marked_so_not_the_last_name(tmp_path):
    for name, marked in (("a", False), ("b", True), ("c", False)):
        write_run_record(tmp_path, name, {}, {"accuracy": 0.5}, headline=marked)
    found = [(p, load_run(p)) for p in records.run_dirs(tmp_path)]
    assert records.headline(found)[0].name == "b" and load_run(tmp_path / "b")["metrics"]["headline"] is True
    assert records.headline(found[::2])[0].name == "c"  # none marked: the last by name, as before
    assert records.headline([]) is None


@pytest.mark.parametrize("folder, name", [("bench", "bench-gemma-2b-nvidia-h200-x-final"),
                                          ("bench-product", "bench-gemma-2b-h200-peers")])
def test_the_committed_headlines_are_the_records_marked_so(folder, name):
    root = Path(__file__).resolve().parents[1] / "results" / folder
    found = [(p, load_run(p)) for p in records.run_dirs(root)]
    marked = [p.name for p, run in found if run["metrics"].get("headline")]
    assert records.headline(found)[0].name == name == marked[-1]


def test_bench_headline_flag_marks_the_record():
    from medcore.bench.command import parse_args

    assert parse_args(["--headline", "--model", "random:tiny-gemma"])[1].headline is True
    assert parse_args(["--model", "random:tiny-gemma"])[1].headline is False


# ---- interruption (a real SIGKILL) of `medcore train`, and secrets in records, checkpoints, logs ----------------

@pytest.mark.usefixtures("one_thread")
def test_sigkill_between_checkpoints_then_resume_ends_like_an_uninterrupted_run(cli_root):
    proc, out, log = _train_until_first_checkpoint(cli_root, "killed")
    run = out.parent
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{log.read_text()[-2000:]}"
    step = _complete_checkpoint(out)
    assert step is not None and step < 6 and not (out / "adapter").exists() and not (run / "results").exists()
    # a kill during the next save leaves a checkpoint without trainer_state.json: resume must not pick it
    half = out / f"checkpoint-{step + 2}"
    half.mkdir(exist_ok=True)
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 16)

    _run(_train_cmd(cli_root, "killed", "--resume"), log)
    full, resumed = (json.loads((cli_root / r / "out" / "train_result.json").read_text()) for r in ("full", "killed"))
    assert resumed["metrics"]["resumed_from"] == str(out / f"checkpoint-{step}")
    steps = [r["step"] for r in resumed["loss_history"]]
    assert steps == [r["step"] for r in full["loss_history"]] == list(range(1, 7))
    for a, b in zip(resumed["loss_history"], full["loss_history"]):
        assert a.keys() == b.keys() and "loss" in a
        for key in a.keys() & {"loss", "eval_loss", "learning_rate", "grad_norm"}:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
    ref, got = (load_file(cli_root / r / "out" / "adapter" / "adapter_model.safetensors") for r in ("full", "killed"))
    assert ref.keys() == got.keys() and len(ref) > 0
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    m_full, m_resumed = (records.load_run(cli_root / r / "results" / "ci-train")["metrics"] for r in ("full", "killed"))
    for key in ("global_step", "n_train_examples", "truncated_train", "skipped_train"):
        assert m_resumed[key] == m_full[key], key
    assert m_resumed["train_loss"] == pytest.approx(m_full["train_loss"], rel=1e-6)


def _leaks(root: Path) -> list[str]:
    token = CANARY_TOKEN.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and token in p.read_bytes()]


@pytest.mark.usefixtures("one_thread")
def test_token_in_environment_never_reaches_records_checkpoints_or_logs(cli_root, tmp_path, monkeypatch):
    log = (cli_root / "full" / "log.txt").read_text()
    assert "Training completed" in log or "train_runtime" in log  # the log is the run's real output
    assert (cli_root / "full" / "results" / "ci-train" / "metrics.json").is_file()
    assert (cli_root / "full" / "out" / "checkpoint-2" / "training_args.bin").is_file()
    assert _leaks(cli_root) == []  # records, checkpoints (pickled arguments too), adapter, logs of every CLI run
    monkeypatch.setenv("HF_TOKEN", CANARY_TOKEN)  # a record whose inputs carry the token: scrubbed on write
    records.write_run_record(tmp_path, "leaky", {"model": {"token": CANARY_TOKEN, "note": f"via {CANARY_TOKEN}"}},
                             {"cmd": f"HF_TOKEN={CANARY_TOKEN} python", "HF_TOKEN": CANARY_TOKEN},
                             loss_history=[{"step": 1, "msg": CANARY_TOKEN}])
    assert _leaks(tmp_path) == [] and (tmp_path / "leaky" / "metrics.json").is_file()
    (tmp_path / "planted.bin").write_bytes(b"\0" + CANARY_TOKEN.encode() + b"\0")
    assert _leaks(tmp_path) == [str(tmp_path / "planted.bin")]  # the scan would see a leak


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_token_never_reaches_the_executed_notebooks(tmp_path, monkeypatch):
    from medcore.flows.pipeline import run_pipeline

    for name, value in _env().items():
        monkeypatch.setenv(name, value)  # the notebooks' kernels inherit it
    _write_jsonl(tmp_path / "dev.json", [_raw(i) for i in range(64)])
    sets = [s for s in SETS if not s.startswith("train.max_steps")] + ["train.max_steps=2",
                                                                       f"data.source=local:{tmp_path / 'dev.json'}"]
    run_dir = run_pipeline("ci", sets, run_dir=tmp_path / "run", progress=False)
    assert len(list(Path(run_dir).glob("0*.ipynb"))) == 5
    assert _leaks(Path(run_dir)) == []


def test_records_name_files_relative_to_the_checkout_whoever_writes_them(tmp_path):
    import medcore.records

    ROOT = Path(medcore.records.__file__).resolve().parent.parent  # the checkout
    inside = str(ROOT / "runs" / "demo" / "results")
    path = write_run_record(tmp_path, "paths", {"results_dir": inside}, {"adapter": Path(ROOT / "runs" / "a")},
                            extra={"real_weights": False, "source": f"local:{ROOT}/x.json"})
    assert json.loads((path / "config.json").read_text())["results_dir"] == "runs/demo/results"
    assert json.loads((path / "metrics.json").read_text())["adapter"] == "runs/a"
    assert json.loads((path / "environment.json").read_text())["source"] == "local:x.json"
