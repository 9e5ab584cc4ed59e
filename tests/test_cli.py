"""The command line (medcore/flows/cli.py): a bad argument to any command is one line and exit status 2, an
unexpected error keeps its traceback, Ctrl-C during training is one line and the run resumes."""
from __future__ import annotations

import json
import signal
import time

import pytest

from medcore.flows.cli import main as cli
from tests.conftest import _complete_checkpoint, _raw, _run, _train_cmd, _train_until_first_checkpoint, _write_jsonl


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    import medcore.flows.evaluate_command

    def bug(*args, **kwargs):
        raise RuntimeError("a bug, not a setting")
    monkeypatch.setattr(medcore.flows.evaluate_command, "evaluate_model", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli(["evaluate"])


@pytest.mark.usefixtures("one_thread")
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
