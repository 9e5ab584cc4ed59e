"""Small study and performance records in the layout `python -m medcore study` writes, for the report tests.

The scoring records are made by `medcore.flows.workflows.score_and_record` (the study's own code path) with the tiny
random-weight Gemma on a few MedMCQA validation questions, with rotations on, so they carry exact scoring's
``credit`` column and the circular and debiased accuracies; a "fine-tuned" model is another random seed.
:func:`scored_with_ties` turns a copy into records of the older layout. The size and speed records are
synthetic, with the fields `medcore study --parts scale` and `medcore bench` write.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd

from medcore import quantize
from medcore.config import load_profile, set_field
from medcore.flows import workflows
from medcore.models import load_tokenizer
from medcore.records import write_run_record

GB = 10**9
QUESTIONS = 24


def _cfg(folder: Path, name: str, **fields):
    cfg = load_profile("ci", ["eval.rotations=true", f"results_dir={folder}", f"name={name}"])
    for key, value in fields.items():
        set_field(cfg, key.replace("__", "."), value)
    return cfg.validate()


def make_study(folder: Path, dev_ds) -> Path:
    """results/study-like records: zero-shot bf16 and NF4+DQ, the main run over two seeds, one ablation, and the
    training records (loss history with an evaluation loss)."""
    eval_ds = dev_ds.select(range(QUESTIONS))
    tok = load_tokenizer("random:tiny-gemma")
    runs = [("study-bf16", "study-bf16-zero-shot", "zero-shot", 0, {"quant__precision": "bf16"}),
            ("study-nf4-dq", "study-nf4-dq-zero-shot", "zero-shot", 0, {}),
            ("study", "study-fine-tuned", "fine-tuned", 1, {}),
            ("study-seed1", "study-seed1-fine-tuned", "fine-tuned", 2, {"train__seed": 1}),
            ("abl-r4", "abl-r4-fine-tuned", "fine-tuned", 3, {"lora__r": 2, "lora__alpha": 4})]
    for name, run_id, role, seed, fields in runs:
        cfg = _cfg(folder, name, **fields)
        model = quantize.load_quantized(cfg.model.source, cfg.quant, device="cpu", seed=seed)
        workflows.score_and_record(cfg, model, tok, eval_ds, run_id, role, cost=False)
        if role == "fine-tuned":
            history = [{"step": 1, "loss": 1.9}, {"step": 2, "loss": 1.6, "eval_loss": 1.7},
                       {"step": 4, "loss": 1.4, "eval_loss": 1.45}]
            write_run_record(folder, f"{name}-train", cfg.to_dict(),
                             {"role": "train", "precision": "nf4+dq", "n_train": 48, "n_eval": QUESTIONS,
                              "global_step": 4, "wall_seconds": 30.0 + seed, "peak_memory_bytes": 2e9 + seed * 1e8,
                              "real_weights": False}, loss_history=history, extra={"real_weights": False})
    return folder


def scored_with_ties(source: Path, target: Path) -> Path:
    """A copy of a study folder as records from before exact scoring: no ``credit`` column, no rotation columns,
    no circular or debiased accuracy."""
    shutil.copytree(source, target)
    for preds in target.glob("*/predictions.parquet"):
        df = pd.read_parquet(preds)
        keep = [c for c in df.columns if c in ("id", "subject", "tier", "choice_type", "answer", "pred", "correct",
                                               "prob", "truncated")]
        df[keep].to_parquet(preds)
        metrics_path = preds.parent / "metrics.json"
        m = json.loads(metrics_path.read_text())
        m = {k: v for k, v in m.items() if not k.startswith(("circular", "debiased", "ties_all", "letters_all",
                                                             "predicted_share_all"))}
        m["rotations"], m["ties"] = False, 5
        metrics_path.write_text(json.dumps(m))
    return target


SCALE_PREFIX = "scale-gemma-2b-random"


def make_scale(folder: Path) -> Path:
    """results/scale-h200-like records: footprint, cost and train per precision (NF4's train record missing)."""
    cfg = {"model": {"source": "random:gemma-2b"}, "lora": {"r": 16}, "train": {"token_budget": 4096}}
    env = {"real_weights": False, "device": "NVIDIA H200"}
    footprint = [{"precision": p, "status": "ok", "embedding_bytes": 1 * GB, "total_bytes": t, "disk_bytes": t + 1000}
                 for p, t in (("bf16", 5 * GB), ("int8", 3 * GB), ("nf4", 2.2 * GB), ("nf4+dq", 2.0 * GB))]
    write_run_record(folder, f"{SCALE_PREFIX}-footprint", cfg, {"role": "footprint", "footprint": footprint}, extra=env)
    for i, p in enumerate(("bf16", "int8", "nf4", "nf4+dq")):
        name = f"{SCALE_PREFIX}-{p.replace('+', '-')}"
        cost = {"latency_ms_median": 10.0 + 10 * i, "best_batch_size": 256, "best_qps": 1000.0 + 100 * i,
                "conditions": {"device_name": "NVIDIA H200"}}
        write_run_record(folder, f"{name}-cost", cfg, {"role": "cost", "precision": p, "cost": cost}, extra=env)
        if p == "nf4":
            continue
        size = footprint[i]["total_bytes"]
        held = i * 1.0 * GB  # left over from the previous run in the process
        write_run_record(folder, f"{name}-train", copy.deepcopy(cfg), {
            "role": "train", "precision": p, "steady_real_tokens_per_s": 7000.0 + i, "device": "cuda:0",
            "resident_memory_bytes": size + 80_000_000 + held, "peak_memory_bytes": size + 80_000_000 + held + 2 * GB,
            "parameters": {"trainable": 20_000_000}}, extra=env)
    return folder
