"""scaleout.py: the runs it plans, and the summary it computes from their records (no GPU needed)."""
import argparse

import numpy as np
import pandas as pd
import pytest

from medcore import records
from medcore.config import load_profile
from medcore.scale import scaleout


def args(**values):
    base = dict(gpus=2, parts="throughput,fsdp,accuracy", model="random:gemma-2b", profile="study", set=[],
                steps=40, token_budget=4096, accuracy_profile="study", accuracy_set=["data.eval_limit=10"],
                results_dir="/r/scaleout", run_limit=300.0)
    return argparse.Namespace(**{**base, **values})


def settings(cmd):
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--set")


def test_plan_one_gpu_then_ddp_then_fsdp_then_real_weight_accuracy():
    runs = scaleout.plan(args())
    assert [r["role"] for r in runs] == ["single", "ddp", "fsdp", "accuracy-train", "accuracy-eval"]
    single, ddp, fsdp, train, evaluate = runs
    assert single["env"] == {"CUDA_VISIBLE_DEVICES": "0"} and "accelerate.commands.launch" not in single["cmd"]
    assert "ddp.yaml" in " ".join(ddp["cmd"]) and "fsdp_qlora.yaml" in " ".join(fsdp["cmd"])
    assert ddp["cmd"][ddp["cmd"].index("--num_processes") + 1] == "2"
    for run in (single, ddp, fsdp):  # the same per-device work, only the number of GPUs differs
        s = settings(run["cmd"])
        assert s["model.source"] == "random:gemma-2b" and s["train.max_steps"] == "40"
        assert s["train.token_budget"] == "4096" and s["train.optimizer"] == "adamw_torch"
    # the real-weight run keeps the one-GPU study's global batch: half the per-device batch on 2 GPUs
    study = load_profile("study")
    s = settings(train["cmd"])
    assert int(s["train.max_batch_size"]) * 2 == study.train.max_batch_size
    assert int(s["train.token_budget"]) * 2 == study.train.token_budget and s["data.eval_limit"] == "10"
    assert evaluate["cmd"][evaluate["cmd"].index("--adapter") + 1].endswith("checkpoints/scaleout-real-ddp2/adapter")
    with pytest.raises(SystemExit, match="unknown part"):
        scaleout.plan(args(parts="throughput,zero"))


def write_train(tmp_path, name, **metrics):
    records.write_run_record(tmp_path, f"{name}-train", {}, {"global_step": 40, **metrics})


def predictions(correct):
    return pd.DataFrame({"id": [f"q{i}" for i in range(len(correct))], "correct": correct})


def test_summary_gives_scaling_efficiency_memory_per_gpu_and_the_accuracy_comparison(tmp_path):
    done = [{**run, "status": "ok", "exit": 0, "seconds": 1.0} for run in scaleout.plan(args())]
    write_train(tmp_path, "scaleout-gemma-2b-single", real_tokens_per_s=1000.0, steady_real_tokens_per_s=1100.0,
                peak_memory_bytes=4e9, resident_memory_bytes=2e9)
    write_train(tmp_path, "scaleout-gemma-2b-ddp2", real_tokens_per_s=1800.0, steady_real_tokens_per_s=2090.0,
                peak_memory_bytes_per_process=[4.1e9, 4.0e9], resident_memory_bytes_per_process=[2e9, 2e9])
    write_train(tmp_path, "scaleout-gemma-2b-fsdp2", real_tokens_per_s=1500.0, steady_real_tokens_per_s=1600.0,
                peak_memory_bytes_per_process=[3e9, 3e9], resident_memory_bytes_per_process=[1e9, 1e9])
    rng = np.random.default_rng(0)
    ref_correct, ddp_correct = rng.random(400) < 0.3, rng.random(400) < 0.3
    metrics = lambda c: {"accuracy": c.mean(), "ci_low": c.mean() - 0.05, "ci_high": c.mean() + 0.05, "n": len(c)}
    records.write_run_record(tmp_path, "reference", {}, metrics(ref_correct), predictions=predictions(ref_correct))
    records.write_run_record(tmp_path, "scaleout-real-ddp2-fine-tuned", {}, metrics(ddp_correct),
                             predictions=predictions(ddp_correct).iloc[::-1])  # row order must not matter
    out = scaleout.summarize(done, tmp_path, tmp_path / "reference")
    assert out["speedup_real_tokens_per_s"] == pytest.approx(1.8)
    assert out["scaling_efficiency_real_tokens_per_s"] == pytest.approx(0.9)
    assert out["scaling_efficiency_steady_real_tokens_per_s"] == pytest.approx(2090 / 2200)
    assert out["training"]["ddp"]["peak_memory_gb_per_gpu"] == [4.1, 4.0]
    assert out["training"]["fsdp"]["resident_memory_gb_per_gpu"] == [1.0, 1.0]
    acc = out["accuracy"]
    assert acc["accuracy"] == pytest.approx(ddp_correct.mean())
    assert acc["mcnemar"]["b"] == int(np.sum(ref_correct & ~ddp_correct))
    assert acc["mcnemar"]["c"] == int(np.sum(~ref_correct & ddp_correct))
    assert acc["inside_reference_interval"] == (abs(ddp_correct.mean() - ref_correct.mean()) <= 0.05)
    assert [r["status"] for r in out["runs"]] == ["ok"] * 5


def test_a_failed_run_leaves_the_others_in_the_summary(tmp_path):
    runs = scaleout.plan(args(parts="throughput"))
    done = [{**runs[0], "status": "failed", "exit": 1, "seconds": 2.0}, {**runs[1], "status": "ok", "exit": 0,
                                                                         "seconds": 3.0}]
    write_train(tmp_path, "scaleout-gemma-2b-ddp2", real_tokens_per_s=1800.0, peak_memory_bytes_per_process=[4e9])
    out = scaleout.summarize(done, tmp_path, None)
    assert set(out["training"]) == {"ddp"} and "speedup_real_tokens_per_s" not in out
    assert out["runs"][0]["status"] == "failed" and "medcore.scale.distributed" in out["runs"][0]["command"]


def test_the_ddp_part_alone_plans_only_the_ddp_run():
    assert [r["role"] for r in scaleout.plan(args(parts="ddp,fsdp"))] == ["ddp", "fsdp"]


@pytest.mark.parametrize("values, words", [
    (dict(model="local:/no/such/model"), "model.source='local:/no/such/model': local model folder"),
    (dict(set=["lora.r=0"]), "lora.r=0 is out of range"),
    (dict(accuracy_set=["lora.rank=4"]), "unknown setting 'lora.rank'"),
    (dict(gpus=1), "--gpus 1: must be at least 2"),
    (dict(steps=0), "--steps 0: must be positive"),
    (dict(parts="throughput,nope"), "unknown part(s) ['nope']"),
])
def test_bad_arguments_are_refused_before_any_run_starts(values, words):
    with pytest.raises((ValueError, SystemExit)) as err:
        scaleout.check_arguments(args(**values))
    assert words in str(err.value)


def test_the_summary_records_the_runconfig_and_the_scaleout_options(tmp_path, monkeypatch):
    from medcore.config import RunConfig

    monkeypatch.setattr(scaleout, "execute", lambda runs, deadline, log_dir: [
        {**run, "exit": None, "status": "not started (deadline)", "seconds": 0.0} for run in runs])
    out = tmp_path / "scaleout"
    assert scaleout.main(["--parts", "throughput,accuracy", "--results-dir", str(out), "--steps", "7",
                          "--accuracy-set", "data.eval_limit=10", "--reference", ""]) == 1
    run = records.load_run(out / "scaleout-summary")
    cfg = RunConfig.from_dict(run["config"])  # the one schema, not the command's flags
    assert cfg.model.source == "random:gemma-2b" and cfg.train.max_steps == 7 and cfg.results_dir == str(out)
    assert run["environment"]["options"]["steps"] == 7 and run["environment"]["options"]["parts"] == "throughput,accuracy"
    assert run["environment"]["configs"]["accuracy"]["data"]["eval_limit"] == 10


def test_options_come_from_the_arguments():
    opts = scaleout.ScaleoutOptions.from_args(args(steps=12))
    assert opts.steps == 12 and opts.gpus == 2 and opts.deadline is None
