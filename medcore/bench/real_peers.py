"""The real peer tools in `python -m medcore bench --peers trl,unsloth,lm_eval`: the same examples timed with TRL's
``SFTTrainer`` QLoRA recipe, unsloth's ``FastLanguageModel`` and lm-evaluation-harness, each against medcore's row
of the same run, as a ratio (medcore / peer for training tokens/s, peer / medcore for scoring time).

Each peer runs in its own subprocess (``python -m medcore.bench.peer_jobs``, where the recipes are), so a crash, an
import error or an incompatible wheel is recorded as ``status: failed`` with the end of its error output and the
bench goes on. The parent writes what the peer needs to a scratch folder: the model folder (a random shape's saved
checkpoint, :func:`medcore.models.random_checkpoint`, with its tokenizer; otherwise the source's own folder), the
training examples as prompt-completion pairs (medcore's prompt, the answer letter medcore trains on), and for
lm_eval a ``dev.json`` of the questions medcore scored plus medcore's trained adapter.

Environment: ``MEDCORE_PEER_PATH_<NAME>`` (``_TRL``, ``_UNSLOTH``, ``_LM_EVAL``; ``os.pathsep``-separated folders)
is put in front of ``PYTHONPATH`` for that peer's subprocess only, and ``MEDCORE_PEER_PATH`` in front of every
peer's: a way to run the peers from separate folders of unpacked wheels (e.g. ``pip install --no-deps --target``)
on a machine whose environment does not have them, or where two peers pin different versions of one package.
``MEDCORE_PEER_PYTHONPATH_<NAME>``, where set, replaces the inherited ``PYTHONPATH`` for that peer instead (the
checkout is always added, so ``medcore`` stays importable). A peer's subprocess runs with the Hub offline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]  # the checkout: medcore/bench/<this file>
CODE_PATHS = {"trl": "trl.SFTTrainer (QLoRA: bitsandbytes NF4 + peft LoraConfig, padding-free, completion-only loss)",
              "unsloth": "unsloth.FastLanguageModel (load_in_4bit, get_peft_model) + trl.SFTTrainer",
              "lm_eval": "lm_eval.simple_evaluate (HFLM, task medcore_medmcqa)"}
PEERS = tuple(CODE_PATHS)
TAIL_LINES = 25


def peer_env(name: str) -> dict[str, str]:
    """The peer's environment: its own folders in front of PYTHONPATH (see the module docstring), the Hub offline."""
    env = dict(os.environ)
    key = name.upper()
    base = env.get(f"MEDCORE_PEER_PYTHONPATH_{key}", env.get("PYTHONPATH", ""))
    parts = [env.get(f"MEDCORE_PEER_PATH_{key}", ""), env.get("MEDCORE_PEER_PATH", ""), base, str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               UNSLOTH_DISABLE_STATISTICS="1")
    return env


def run_peer(name: str, spec: dict, folder: Path, timeout: float) -> dict[str, Any]:
    """One peer subprocess; its JSON result with ``status: ok``, or ``status: failed`` and the end of its output."""
    spec_path, out_path, log_path = folder / f"{name}-spec.json", folder / f"{name}-result.json", folder / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=1))
    row: dict[str, Any] = {"peer": name, "code_path": CODE_PATHS[name]}
    cmd = [sys.executable, "-m", "medcore.bench.peer_jobs", name, str(spec_path), str(out_path)]
    start = time.perf_counter()
    try:
        with open(log_path, "wb") as log:
            done = subprocess.run(cmd, cwd=ROOT, env=peer_env(name), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        rc = done.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    row["process_seconds"] = time.perf_counter() - start
    if rc == 0 and out_path.is_file():
        return {**row, "status": "ok", **json.loads(out_path.read_text())}
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    what = f"timed out after {timeout:.0f} s" if rc == "timeout" else f"exit status {rc}"
    return {**row, "status": "failed", "error": f"{what}\n" + "\n".join(lines[-TAIL_LINES:])}


def skipped(name: str, reason: str) -> dict[str, Any]:
    return {"peer": name, "code_path": CODE_PATHS[name], "status": "skipped", "reason": reason}


# ---- what the peers read -----------------------------------------------------------------------------------------

def model_folder(cfg, tokenizer, folder: Path) -> str:
    """A folder from_pretrained can read, with the tokenizer: the saved random checkpoint medcore's quantized load
    reads (symlinked beside the tokenizer), the embedded model's folder, or the source's own folder."""
    import torch

    from medcore import embedded, models
    from medcore.quantize import DTYPES

    src = models.check_model_source(cfg.model.source)
    if src.kind == "embedded":
        return str(embedded.ensure_embedded_model(src.name))
    if src.kind != "random":
        return models.pretrained_folder(src)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    saved = models.random_checkpoint(src, DTYPES[cfg.quant.compute_dtype], 0, device)
    out = folder / "model"
    out.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        if not (out / name).exists():
            (out / name).symlink_to(saved / name)
    tokenizer.save_pretrained(out)
    return str(out)


def prompt_completion(records: Sequence[dict]) -> list[dict[str, str]]:
    """TRL's prompt-completion rows: medcore's prompt text and the answer letter medcore trains on (" A".." D")."""
    from medcore.prompts import LETTERS, format_prompt

    return [{"prompt": format_prompt(r["question"], r["options"]), "completion": " " + LETTERS[r["answer"]]}
            for r in records]


def release_rows(records: Sequence[dict]) -> list[dict]:
    """Canonical records back in the release's dev.json form (cop 1-4), which the medcore_medmcqa task reads."""
    return [{"id": r.get("id", str(i)), "question": r["question"], "opa": r["options"][0], "opb": r["options"][1],
             "opc": r["options"][2], "opd": r["options"][3], "cop": r["answer"] + 1,
             "subject_name": r.get("subject"), "choice_type": r.get("choice_type")} for i, r in enumerate(records)]


def _jsonl(path: Path, rows: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def training_spec(cfg, records: Sequence[dict], model_dir: str, med: dict, opts, device: str, folder: Path) -> dict:
    """What a training peer gets: as many examples per step as medcore's steps held on average (so its tokens per
    step match medcore's token budget as filled), medcore's optimizer, learning rate and LoRA settings."""
    from medcore.lora import TARGET_MODULES
    from medcore.train import resolve_optimizer

    per_step = max(1, round(med["examples"] / max(med["steps"], 1)))
    names = TARGET_MODULES[cfg.lora.targets]
    lo = cfg.lora
    return {"model_dir": model_dir, "device": device, "data_file": _jsonl(folder / "train.jsonl", prompt_completion(records)),
            "batch_size": per_step, "steps": opts.steps, "warmup": opts.warmup, "seed": cfg.train.seed,
            "learning_rate": cfg.train.learning_rate, "optimizer": resolve_optimizer(cfg.train.optimizer, device == "cuda"),
            "max_seq_length": max(cfg.data.max_length, 2048),
            "lora": {"r": lo.r, "alpha": lo.alpha, "dropout": lo.dropout, "module_names": names,
                     "targets": "all-linear" if lo.targets == "all-linear" else names},
            "medcore_tokens_per_step": med["real_tokens"] / max(med["steps"], 1), "medcore_examples_per_step": per_step}


def scoring_spec(cfg, records: Sequence[dict], model_dir: str, adapter_dir: str | None, batch_size: int,
                 device: str, folder: Path, dtype: str | None = None) -> dict:
    data = folder / "release"
    data.mkdir(exist_ok=True)
    _jsonl(data / "dev.json", release_rows(records))
    return {"model_dir": model_dir, "adapter_dir": adapter_dir, "data_dir": str(data), "device": device,
            "batch_size": batch_size, "quantize": cfg.quant.precision not in ("bf16", "fp32"),
            "dtype": dtype or ("bfloat16" if device == "cuda" else "float32")}


# ---- the rows ----------------------------------------------------------------------------------------------------

def with_ratio(row: dict, med: dict) -> dict:
    """``ratio``: medcore / peer for training tokens/s, peer / medcore for scoring seconds (None unless both ran)."""
    if row.get("status") != "ok":
        return {**row, "ratio": None}
    if row["peer"] == "lm_eval":
        row["medcore_seconds"], row["medcore_warm_seconds"] = med["cold_seconds"], med["seconds"]
        row["ratio"] = row["scoring_wall_seconds"] / med["cold_seconds"]
        row["ratio_loglikelihood_vs_warm"] = row["loglikelihood_seconds"] / med["seconds"]
        row["ratio_kind"] = "peer scoring wall seconds / medcore first-pass scoring seconds, same questions"
    else:
        row["medcore_real_tokens_per_s"] = med["real_tokens_per_s"]
        row["ratio"] = med["real_tokens_per_s"] / row["real_tokens_per_s"] if row.get("real_tokens_per_s") else None
        row["ratio_kind"] = "medcore steady real tokens/s / peer steady real tokens/s"
    return row


def agreement(row: dict, medcore_pred) -> dict:
    if row.get("status") == "ok" and "pred" in row:
        same = [int(a) == int(b) for a, b in zip(row["pred"], medcore_pred)]
        row["agreement_with_medcore"] = sum(same) / max(len(same), 1)
    return row


def run_peers(names: Sequence[str], cfg, model, tokenizer, records: Sequence[dict], scored: Sequence[dict],
              med_train: dict, med_score: dict, medcore_pred, score_batch_size: int, opts, device) -> list[dict]:
    """Every asked peer's row, with its ratio to medcore's row of this run; a peer that fails is recorded so."""
    import tempfile

    from medcore.bench.peers import free_memory

    rows = []
    free_memory()
    with tempfile.TemporaryDirectory(prefix="medcore-peers-") as tmp:
        folder = Path(tmp)
        try:
            model_dir = model_folder(cfg, tokenizer, folder)
        except Exception as err:  # noqa: BLE001 - no model folder: every peer fails for the same reason
            return [{"peer": n, "code_path": CODE_PATHS[n], "status": "failed", "ratio": None,
                     "error": f"model folder: {type(err).__name__}: {err}"} for n in names]
        for name in names:
            print(f"[bench] peer {name} ...", flush=True)
            if name == "unsloth" and device.type != "cuda":
                row = skipped(name, "unsloth needs a CUDA GPU; this run has none")
            elif name == "lm_eval":
                adapter = folder / "adapter"
                if hasattr(model, "peft_config") and not adapter.exists():
                    model.save_pretrained(adapter)
                spec = scoring_spec(cfg, scored, model_dir, str(adapter) if adapter.exists() else None,
                                    score_batch_size, device.type, folder)
                row = agreement(with_ratio(run_peer(name, spec, folder, opts.peer_timeout), med_score), medcore_pred)
            else:
                spec = training_spec(cfg, records, model_dir, med_train, opts, device.type, folder)
                row = with_ratio(run_peer(name, spec, folder, opts.peer_timeout), med_train)
                row.setdefault("medcore_tokens_per_step", spec["medcore_tokens_per_step"])
            row.setdefault("ratio", None)
            rows.append(row)
            print(f"[bench] peer {name}: {row['status']}" + (f", ratio {row['ratio']:.2f}" if row["ratio"] else ""),
                  flush=True)
    return rows
