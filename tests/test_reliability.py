"""Issue 8, reliability: bad data, bad config, interruption (a real SIGKILL), non-finite loss, determinism, secrets.

Everything runs the tiny random Gemma on the CPU. The interruption and secret tests train through the command
line (``python -m medcore train``) in subprocesses, so a kill is a real kill and the token is really in the
environment; the rest calls the library in-process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medcore import data, evaluate, lora, models, results, train
from medcore.__main__ import main as cli
from medcore.config import ConfigError, LoraConfig, RunConfig
from medcore.prompts import PromptTooLongError, encode_example, encode_for_scoring

ROOT = Path(__file__).resolve().parents[1]
TINY = "random:tiny-gemma"
FAKE_TOKEN = "hf_FakeLeakCanary0123456789abcdefXYZ"  # the shape of a real token, so nothing may treat it as text
SUBJECTS = ("Anatomy", "Pathology", "Medicine", "Surgery")


def _raw(i: int, **over) -> dict:
    """One record in the original release format (1-based cop)."""
    words = " ".join(f"w{(7 * i + 3 * k) % 61}" for k in range(3 + i % 11))
    rec = {"id": f"q{i}", "question": f"Q{i} {words}?", "opa": "alpha", "opb": "beta", "opc": "gamma",
           "opd": "delta", "cop": 1 + i % 4, "choice_type": "single", "exp": None,
           "subject_name": SUBJECTS[i % 4], "topic_name": None}
    rec.update(over)
    return rec


def _records(n: int, start: int = 0, **over) -> list[dict]:
    """Canonical records (as data.load_medmcqa gives them)."""
    out = []
    for i in range(start, start + n):
        r = _raw(i)
        out.append({"id": r["id"], "question": r["question"], "options": [r[k] for k in ("opa", "opb", "opc", "opd")],
                    "answer": r["cop"] - 1, "subject": r["subject_name"], "topic": None, "choice_type": "single",
                    "explanation": None, **over})
    return out


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (subprocesses get OMP_NUM_THREADS=1): on a busy 2-core machine, two spinning threads per
    process make the tiny model about ten times slower, and the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(TINY)


def _cfg(**train_values) -> RunConfig:
    cfg = RunConfig()
    cfg.data.max_length = 128
    cfg.lora = LoraConfig(r=4, alpha=8, dropout=0.1)
    values = dict(learning_rate=1e-2, max_steps=3, token_budget=512, max_batch_size=4, warmup_ratio=0.0,
                  logging_steps=1, eval_steps=100, save_steps=100, gradient_checkpointing=False)
    for key, value in {**values, **train_values}.items():
        setattr(cfg.train, key, value)
    return cfg


def _adapted(seed: int = 0):
    model = models.load_model(TINY, dtype=torch.float32)
    torch.manual_seed(seed)
    return lora.attach_adapter(model, _cfg().lora, quantized=False)


NOT_A_MODEL = torch.nn.Linear(2, 2)  # train() must refuse bad input before a model would ever run


# ---- bad data ------------------------------------------------------------------------------------------------

MORE_BAD = {  # cases beyond tests/test_data.py's BAD: (line 2 of a 4-line file, reason)
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


def test_file_with_no_valid_record_is_a_clear_error(tmp_path):
    path = _write_jsonl(tmp_path / "dev.json", [b"not json", _raw(1, cop=9)])
    with pytest.raises(ValueError, match=r"no valid MedMCQA records .*skipped 2"):
        data.load_medmcqa(f"local:{path}", on_invalid="skip")


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


def test_long_question_is_cut_and_counted_in_training_metrics(tmp_path, tok, caplog):
    recs = _records(6)
    for r in recs[:2]:
        r["question"] = "A long history of fever, cough and weight loss. " * 12
    with caplog.at_level(logging.WARNING, logger="medcore.train"):
        encoded = train.encode_dataset(datasets.Dataset.from_list(recs), tok, 128)
    assert encoded["truncated"] == [True, True, False, False, False, False] and max(encoded["length"]) <= 128
    assert "2 questions cut to fit" in caplog.text
    for ids, rec in zip(encoded["input_ids"][:2], recs):  # the choices and the answer position survive the cut
        assert tok.decode(ids).replace(" ", "").endswith("D.delta\nAnswer:" + "ABCD"[rec["answer"]])
    result = train.train(_cfg(max_steps=1), _adapted(), tok, datasets.Dataset.from_list(recs),
                         datasets.Dataset.from_list(recs[:3]), tmp_path)
    m = result.metrics
    assert (m["truncated_train"], m["truncated_eval"], m["skipped_train"], m["n_train_examples"]) == (2, 2, 0, 6)


def test_choices_longer_than_max_length_name_the_record(tmp_path, tok):
    recs = _records(5)
    recs[3]["options"] = ["a very long option " * 20] * 4
    ds = datasets.Dataset.from_list(recs)
    with pytest.raises(PromptTooLongError, match=r"record 'q3': the choices alone take more than 127 tokens"):
        train.encode_dataset(ds, tok, 128)
    cfg = _cfg()
    with pytest.raises(PromptTooLongError, match="record 'q3'"):  # before anything runs (this is not a model)
        train.train(cfg, NOT_A_MODEL, tok, ds, None, tmp_path)
    with pytest.raises(PromptTooLongError, match="record 'q3'.*data.max_length"):
        evaluate.score_choices(NOT_A_MODEL, tok, recs, max_length=128, progress=False)
    cfg.data.on_invalid = "skip"
    assert train.encode_dataset(ds, tok, 128, on_invalid="skip")["id"] == ["q0", "q1", "q2", "q4"]
    m = train.train(cfg, _adapted(), tok, ds, None, tmp_path / "skip").metrics
    assert (m["skipped_train"], m["n_train_examples"], m["global_step"]) == (1, 5, 3)


# ---- bad config (the settings table and its command-line test are in test_config) ---------------------------

def test_token_budget_smaller_than_longest_encoded_example_is_named(tmp_path, tok):
    cfg = _cfg(token_budget=64)  # not validated: train() must catch it itself, before the model runs
    recs = _records(4)
    recs[2]["question"] = "Which of these is longest? " * 3
    lengths = train.encode_dataset(datasets.Dataset.from_list(recs), tok, 128)["length"]
    with pytest.raises(ConfigError) as err:
        train.train(cfg, NOT_A_MODEL, tok, datasets.Dataset.from_list(recs), None, tmp_path)
    assert f"train.token_budget=64 is smaller than a training example 'q2' ({max(lengths)} tokens)" in str(err.value)
    assert not any(tmp_path.iterdir())


# ---- non-finite loss ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tok, monkeypatch):
    real, calls = train.answer_only_loss, {"n": 0}

    def poisoned(model, *args):
        loss = real(model, *args)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 3:
                return loss * float("nan")
        return loss
    monkeypatch.setattr(train, "answer_only_loss", poisoned)
    cfg, ds = _cfg(max_steps=4, save_steps=2), datasets.Dataset.from_list(_records(8))
    with pytest.raises(train.NonFiniteLossError, match=r"training loss is nan at step 3; the last checkpoint, "
                                                       r".*checkpoint-2, is from before it"):
        train.train(cfg, _adapted(), tok, ds, None, tmp_path)
    saved = sorted(p.name for p in tmp_path.iterdir() if p.name != "runs")  # runs/: the TensorBoard events
    assert saved == ["checkpoint-2"]  # no adapter/, nothing after the NaN
    assert train.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    weights = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    monkeypatch.setattr(train, "answer_only_loss", real)  # the cause fixed, the run resumes from the good checkpoint
    resumed = train.train(cfg, _adapted(), tok, ds, None, tmp_path, resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2") and resumed.metrics["global_step"] == 4


def test_non_finite_gradient_stops_before_anything_is_saved_from_it(tmp_path, tok):
    class InfGradientAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                param = next(p for n, p in model.named_parameters() if p.requires_grad)
                param.register_hook(lambda g: g * float("inf"))

    model = _adapted()
    with pytest.raises(train.NonFiniteLossError, match="a gradient is NaN or infinite at step 2.*checkpoint-1"):
        train.train(_cfg(save_steps=1), model, tok, datasets.Dataset.from_list(_records(8)), None, tmp_path,
                    callbacks=[InfGradientAtStep2()])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "runs") == ["checkpoint-1"]
    weights = load_file(tmp_path / "checkpoint-1" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())  # nothing saved after the bad step


def test_a_bad_step_between_reads_is_named_by_its_own_step(tmp_path, tok, monkeypatch):
    # flags are read only at logging / saving steps: a NaN at step 2 is found at step 4 and still named step 2
    real, calls = train.answer_only_loss, {"n": 0}

    def poisoned(model, *args):
        loss = real(model, *args)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return loss * float("inf")
        return loss
    monkeypatch.setattr(train, "answer_only_loss", poisoned)
    cfg = _cfg(max_steps=6, save_steps=4, logging_steps=4)
    with pytest.raises(train.NonFiniteLossError, match=r"training loss is inf at step 2; no checkpoint"):
        train.train(cfg, _adapted(), tok, datasets.Dataset.from_list(_records(12)), None, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != "runs"]  # checkpoint-4 never written
    assert calls["n"] == 4  # it ran on to the first read, no further


def test_incomplete_checkpoint_is_skipped(tmp_path):
    for step, state in [(2, "{}"), (4, '{"global_st'), (6, None)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert train.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert train.last_checkpoint(tmp_path / "missing") is None


# ---- determinism -------------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_losses_and_predictions(tmp_path, tok):
    train_ds, questions = datasets.Dataset.from_list(_records(12)), _records(8, start=20)

    def run(name, seed):
        cfg = _cfg(seed=seed)
        model = _adapted(seed)
        history = train.train(cfg, model, tok, train_ds, None, tmp_path / name).loss_history
        return history, evaluate.score_choices(model, tok, questions, batch_size=4, max_length=128, progress=False)

    (h1, p1), (h2, p2), (h3, _) = run("a", 0), run("b", 0), run("c", 1)
    assert h1 == h2 and len(h1) == 3  # exactly equal: loss, learning rate, gradient norm at every step
    assert p1.equals(p2)  # predictions and every log-probability
    assert [r["loss"] for r in h3] != [r["loss"] for r in h1]  # the seed matters: the test can fail


# ---- interruption (a real SIGKILL) and secrets -------------------------------------------------------------------

SETS = ["data.train_size=16", "data.eval_limit=8", "train.max_steps=6", "train.save_steps=2", "train.eval_steps=3",
        "train.logging_steps=1", "train.max_batch_size=4"]


def _env() -> dict:
    return {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN, "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _train_cmd(root: Path, name: str, *extra: str) -> list[str]:
    sets = [*SETS, f"data.source=local:{root / 'dev.json'}", f"results_dir={root / name / 'results'}"]
    return [sys.executable, "-m", "medcore", "train", "--profile", "ci", *[a for s in sets for a in ("--set", s)],
            "--output-dir", str(root / name / "out"), *extra]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory) -> Path:
    """A small data file and one uninterrupted run through the command line, with a token in the environment."""
    root = tmp_path_factory.mktemp("cli")
    _write_jsonl(root / "dev.json", [_raw(i) for i in range(64)])
    (root / "full").mkdir()
    _run(_train_cmd(root, "full"), root / "full" / "log.txt")
    return root


def _complete_checkpoint(out: Path) -> int | None:
    found = train.last_checkpoint(out) if out.is_dir() else None
    return int(found.rsplit("-", 1)[1]) if found else None


def _train_until_first_checkpoint(cli_root: Path, name: str):
    """`medcore train` started in its own folder, returned once its first complete checkpoint is on disk (or it
    ended, or 300 s passed): (process, output folder, log)."""
    run = cli_root / name
    run.mkdir()
    out, log = run / "out", run / "log.txt"
    with open(log, "ab") as f:
        proc = subprocess.Popen(_train_cmd(cli_root, name), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _complete_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, out, log


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
    m_full, m_resumed = (results.load_run(cli_root / r / "results" / "ci-train")["metrics"] for r in ("full", "killed"))
    for key in ("global_step", "n_train_examples", "truncated_train", "skipped_train"):
        assert m_resumed[key] == m_full[key], key
    assert m_resumed["train_loss"] == pytest.approx(m_full["train_loss"], rel=1e-6)


def _leaks(root: Path) -> list[str]:
    token = FAKE_TOKEN.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and token in p.read_bytes()]


def test_token_in_environment_never_reaches_records_checkpoints_or_logs(cli_root, tmp_path, monkeypatch):
    log = (cli_root / "full" / "log.txt").read_text()
    assert "Training completed" in log or "train_runtime" in log  # the log is the run's real output
    assert (cli_root / "full" / "results" / "ci-train" / "metrics.json").is_file()
    assert (cli_root / "full" / "out" / "checkpoint-2" / "training_args.bin").is_file()
    assert _leaks(cli_root) == []  # records, checkpoints (pickled arguments too), adapter, logs of every CLI run
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # a record whose inputs carry the token: scrubbed on write
    results.write_run_record(tmp_path, "leaky", {"model": {"token": FAKE_TOKEN, "note": f"via {FAKE_TOKEN}"}},
                             {"cmd": f"HF_TOKEN={FAKE_TOKEN} python", "HF_TOKEN": FAKE_TOKEN},
                             loss_history=[{"step": 1, "msg": FAKE_TOKEN}])
    assert _leaks(tmp_path) == [] and (tmp_path / "leaky" / "metrics.json").is_file()
    (tmp_path / "planted.bin").write_bytes(b"\0" + FAKE_TOKEN.encode() + b"\0")
    assert _leaks(tmp_path) == [str(tmp_path / "planted.bin")]  # the scan would see a leak


@pytest.mark.slow
def test_token_never_reaches_the_executed_notebooks(tmp_path, monkeypatch):
    from medcore.pipeline import run_pipeline

    for name, value in _env().items():
        monkeypatch.setenv(name, value)  # the notebooks' kernels inherit it
    _write_jsonl(tmp_path / "dev.json", [_raw(i) for i in range(64)])
    sets = [s for s in SETS if not s.startswith("train.max_steps")] + ["train.max_steps=2",
                                                                       f"data.source=local:{tmp_path / 'dev.json'}"]
    run_dir = run_pipeline("ci", sets, run_dir=tmp_path / "run", progress=False)
    assert len(list(Path(run_dir).glob("0*.ipynb"))) == 5
    assert _leaks(Path(run_dir)) == []


# ---- one error path for every command ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["study", "--set", "lora.r=0"], "medcore study: error: lora.r=0 is out of range [1, 1024]"),
    (["study", "--ablations", "abl-r4,nope"], "medcore study: error: --ablations: unknown 'nope'; choose from "
                                               "abl-bf16-lora, abl-int8,"),
    (["study", "--parts", "main,everything"], "medcore study: error: --parts: unknown 'everything'; choose from "
                                              "zero-shot, main, kfold, ablations, scale, footprint"),
    (["bench", "--set", "lora.r=0"], "medcore bench: error: lora.r=0 is out of range"),
    (["scaleout", "--model", "local:/no/such/model"], "medcore scaleout: error: model.source='local:/no/such/model'"),
    (["scaleout", "--gpus", "1"], "medcore scaleout: error: --gpus 1: must be at least 2"),
    (["scaleout", "--parts", "nope"], "medcore scaleout: error: unknown part(s) ['nope']"),
    (["evaluate", "--limit", "0"], "medcore evaluate: error: --limit 0: give a positive number"),
    (["evaluate", "--limit", "-5"], "medcore evaluate: error: --limit -5: give a positive number"),
    (["evaluate", "--adapter", "/no/such/adapter"], "medcore evaluate: error: adapter /no/such/adapter: no "
                                                    "adapter_config.json"),
])
def test_a_bad_argument_to_any_command_is_one_line_and_exit_2(no_loading, tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)  # nothing may be written here either
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(words) and "\n" not in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_a_hub_model_without_the_hub_is_one_line_and_exit_2_within_seconds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refuses at once, network or not
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _write_jsonl(tmp_path / "dev.json", [_raw(i) for i in range(4)])
    start = time.monotonic()
    rc = cli(["evaluate", "--model", "hub:medcore-tests/no-such-model", "--source", f"local:{tmp_path / 'dev.json'}",
              "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and time.monotonic() - start < 20 and "\n" not in err
    assert err.startswith("medcore evaluate: error: the Hugging Face Hub cannot be reached") and "local:<folder>" in err


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    import medcore.workflows

    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a setting")
    monkeypatch.setattr(medcore.workflows, "evaluate_model", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli(["evaluate"])


def test_ctrl_c_during_training_is_one_line_keeps_the_checkpoint_and_resume_finishes(cli_root):
    proc, out, log = _train_until_first_checkpoint(cli_root, "ctrl-c")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    last = text.strip().splitlines()[-1]  # on a line of its own, also below a progress bar
    assert "Traceback" not in text and last.startswith("medcore train: interrupted: training stopped by Ctrl-C; "
                                                       "the last complete checkpoint, ")
    step = _complete_checkpoint(out)
    assert f"checkpoint-{step}" in last and step < 6 and not (out / "adapter").exists()
    _run(_train_cmd(cli_root, "ctrl-c", "--resume"), log)
    result = json.loads((out / "train_result.json").read_text())
    assert result["metrics"]["resumed_from"] == str(out / f"checkpoint-{step}")
    assert result["metrics"]["global_step"] == 6 and (out / "adapter" / "adapter_model.safetensors").is_file()
