"""Scale-out: DDP training and sharded evaluation on two CPU processes (gloo), launched with `accelerate launch`
and the shipped config; batch sharding, reassembly and the FSDP storage dtype checked in-process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from medcore import evaluate, lora, models, quantize, records, train
from medcore.config import QuantConfig, load_profile
from medcore.flows import workflows
from medcore.scale import distributed

REPO = Path(__file__).resolve().parents[1]
LETTER_COLUMNS = [f"logprob_{c}" for c in "ABCD"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: str, overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file medcore/scale/accelerate/ddp.yaml --num_processes 2
    -m medcore.scale.distributed ...`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(distributed.config_path("ddp")),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
           "-m", "medcore.scale.distributed", command, "--profile", "ci", *[a for o in overrides for a in ("--set", o)],
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
    return out


def settings(medmcqa_dir, tmp_path, **values) -> list[str]:
    base = {"data.source": f"local:{medmcqa_dir}/dev.json", "results_dir": str(tmp_path / "results"), **values}
    return [f"{k}={v}" for k, v in base.items()]


# ---- in-process: how batches and questions are split -------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3])
def test_accelerate_gives_each_process_different_token_budget_batches_and_equal_steps(world):
    lengths = [5, 9, 3, 7, 8, 2, 6, 4, 9, 1, 3]
    sampler = train.TokenBudgetBatchSampler(lengths, token_budget=16, max_batch_size=4, shuffle=True, seed=0)
    batches = list(sampler)
    shards = [list(BatchSamplerShard(sampler, world, r)) for r in range(world)]  # what accelerator.prepare does
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(BatchSamplerShard(sampler, world, 0))
                                                       for s in shards)
    steps = len(shards[0])
    for step in range(steps):  # at every step the processes hold different batches
        at_step = [tuple(s[step]) for s in shards]
        assert len(set(at_step)) == world
    dealt = [shards[i % world][i // world] for i in range(len(batches))]
    assert dealt == batches  # round robin over the one shuffled order; the rest of the last round repeats batch 0..
    assert [shards[i % world][i // world] for i in range(len(batches), steps * world)] == \
        batches[:steps * world - len(batches)]


def test_reassemble_interleaves_uneven_shards_in_input_order():
    n = 7
    for world in (2, 3, 8):  # 8 > n: some processes score nothing
        shards = [pd.DataFrame({"pos": distributed.shard(n, r, world)}) if distributed.shard(n, r, world) else None
                  for r in range(world)]
        assert sum(len(s) for s in shards if s is not None) == n
        assert distributed.reassemble(shards, n)["pos"].tolist() == list(range(n))


def test_reassemble_refuses_missing_or_duplicated_rows():
    full = [pd.DataFrame({"pos": [0, 2, 4]}), pd.DataFrame({"pos": [1, 3]})]
    with pytest.raises(ValueError):
        distributed.reassemble([full[0], full[1].iloc[:1]], 5)
    with pytest.raises(ValueError):
        distributed.reassemble([full[0], pd.concat([full[1], full[1].iloc[:1]])], 5)


def test_fsdp_config_and_bf16_quant_storage_give_one_float_dtype():
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp = load_config_from_file(str(distributed.config_path("fsdp_qlora")))
    assert str(fsdp.distributed_type).endswith("FSDP")
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is False
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False  # medcore loads on each process's GPU
    assert str(load_config_from_file(str(distributed.config_path("ddp"))).distributed_type).endswith("MULTI_GPU")
    model = quantize.load_quantized("random:tiny-gemma", QuantConfig("nf4", True), device="cpu",
                                    dtype=torch.bfloat16, quant_storage="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # FSDP flattens only one float dtype
    model = lora.attach_adapter(model, load_profile("ci").lora, quantized=True)
    ids = torch.randint(4, 200, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_old_module_name_still_runs_the_entry_point():
    """`-m medcore.distributed` (the name before medcore/scale/) is kept for one release."""
    out = subprocess.run([sys.executable, "-m", "medcore.distributed", "train", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "medcore.scale.distributed" in out.stdout and "--profile PROFILE" in out.stdout


# ---- two processes -----------------------------------------------------------------------------------------

def test_ddp_follows_the_single_process_loss_curve(tmp_path, medmcqa_dir, monkeypatch):
    """DDP on 2 processes = one process accumulating the same batches 2 at a time (the same global batch)."""
    # 28 questions make 4 token-budget batches: 2 steps an epoch on 2 processes, no repeated batch at the epoch's
    # end (accelerate's even_batches); 4 steps cross the epoch boundary and its reshuffle
    overrides = settings(medmcqa_dir, tmp_path, **{"data.train_size": 28, "data.eval_limit": 4,
                                                   "train.max_steps": 4, "lora.dropout": 0.0})
    launch("train", overrides, "--output-dir", str(tmp_path / "ddp"))
    ddp = json.loads((tmp_path / "ddp" / "train_result.json").read_text())
    record = records.load_run(tmp_path / "results" / "ci-train")
    assert record["metrics"]["world_size"] == 2 and record["metrics"]["distributed_type"] == "MULTI_CPU"

    cfg = load_profile("ci", overrides)
    make_args = train.training_arguments

    def accumulate_two(*args, **kwargs):
        out = make_args(*args, **kwargs)
        out.gradient_accumulation_steps = 2
        return out

    monkeypatch.setattr(train, "training_arguments", accumulate_two)
    monkeypatch.setattr(train.AnswerOnlyTrainer, "loss_is_scaled_for_ga", False)  # a per-batch mean: divide by 2
    train_ds, eval_ds = workflows.study_data(cfg)
    model = quantize.load_quantized(cfg.model.source, cfg.quant, device="cpu")
    torch.manual_seed(cfg.train.seed)
    model = lora.attach_adapter(model, cfg.lora, quantized=True)
    single = train.train(cfg, model, models.load_tokenizer(cfg.model.source), train_ds, eval_ds,
                         tmp_path / "single")

    ref, got = single.loss_history, ddp["loss_history"]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3, 4]
    assert [r["epoch"] for r in got] == [r["epoch"] for r in ref] == [0.5, 1.0, 1.5, 2.0]
    for key in ("loss", "eval_loss", "grad_norm", "learning_rate"):
        a = [r.get(key) for r in ref]
        assert [r.get(key) is None for r in got] == [x is None for x in a]
        np.testing.assert_allclose([r[key] for r in got if key in r], [x for x in a if x is not None],
                                   rtol=1e-3, atol=1e-4, err_msg=key)
    assert ddp["metrics"]["examples"] == single.metrics["examples"]  # both processes' examples are counted
    from safetensors.torch import load_file

    mine, theirs = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (tmp_path / "ddp", tmp_path / "single"))
    assert mine.keys() == theirs.keys()
    for name in mine:  # rank 0's adapter saw the other process's gradients too
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-3, atol=1e-5)


def test_sharded_evaluation_scores_every_question_once_in_order(tmp_path, medmcqa_dir):
    overrides = settings(medmcqa_dir, tmp_path, **{"data.eval_limit": 7, "eval.batch_size": 1})
    launch("evaluate", overrides, "--run-id", "sharded")
    preds = records.load_predictions(tmp_path / "results" / "sharded")
    cfg = load_profile("ci", overrides)
    _, eval_ds = workflows.study_data(cfg)
    model, tokenizer = workflows.load(cfg)
    single = evaluate.score_choices(model, tokenizer, eval_ds, batch_size=1, max_length=cfg.data.max_length,
                                    progress=False)
    assert len(preds) == 7 and preds["id"].is_unique
    assert preds["id"].astype(str).tolist() == [str(i) for i in eval_ds["id"]]
    np.testing.assert_allclose(preds[LETTER_COLUMNS].to_numpy(), single[LETTER_COLUMNS].to_numpy(), atol=1e-3)
    assert (preds["answer"].to_numpy() == single["answer"].to_numpy()).all()
    assert records.load_run(tmp_path / "results" / "sharded")["metrics"]["world_size"] == 2


def test_an_fsdp_launch_is_recognised_before_the_trainer_exists(monkeypatch):
    # accelerate launch sets ACCELERATE_USE_FSDP; PartialState alone still reports MULTI_GPU / NO there
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert not distributed.is_fsdp(distributed.process_state())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.is_fsdp(distributed.process_state())


def test_a_launch_refuses_an_output_folder_medcore_did_not_write(tmp_path, medmcqa_dir, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    monkeypatch.setattr(distributed, "load_for_process", lambda *a, **k: pytest.fail("loaded a model first"))
    cfg = load_profile("ci", settings(medmcqa_dir, tmp_path, **{"data.train_size": 8, "data.eval_limit": 4}))
    from medcore.config import ConfigError

    with pytest.raises(ConfigError, match=r"mine is not empty \(thesis.tex\) and is not a medcore run"):
        distributed.train(cfg, output_dir=mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
