"""The training folder (medcore.flows.train_folder): a new run deletes only what medcore wrote, a resume names
every changed setting."""
from __future__ import annotations

import json

import pytest

from medcore.config import load_profile
from medcore.flows import train_folder as tf


@pytest.fixture
def cfg(tmp_path, medmcqa_dir):
    return load_profile("ci", [f"data.source=local:{medmcqa_dir / 'dev.json'}", f"results_dir={tmp_path / 'results'}"])


def test_a_new_run_in_medcore_s_own_folder_replaces_only_what_medcore_wrote(cfg, tmp_path):
    out = tf.prepare_output_dir(cfg, tmp_path / "out", resume=False)
    for name in ("checkpoint-2", "checkpoint-4", "adapter", "runs"):
        (out / name).mkdir()
        (out / name / "weights.bin").write_bytes(b"0")
    (out / "train_result.json").write_text("{}")
    (out / "my-notes.txt").write_text("keep me")
    tf.prepare_output_dir(cfg, out, resume=False)
    assert sorted(p.name for p in out.iterdir()) == ["medcore_run.json", "my-notes.txt"]
    assert json.loads((out / "medcore_run.json").read_text())["config"] == json.loads(json.dumps(cfg.to_dict()))


def test_changed_settings_treat_a_setting_new_to_medcore_at_its_default_as_unchanged(cfg):
    old = json.loads(json.dumps(cfg.to_dict()))
    del old["train"]["compile"]  # a run recorded before the setting existed
    assert tf.changed_settings(old, cfg.to_dict()) == []
    cfg.train.compile = True
    assert tf.changed_settings(old, cfg.to_dict()) == ["train.compile: '(unset)' -> True"]
