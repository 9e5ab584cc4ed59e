"""The subprocess side of the real peers (:mod:`medcore.bench.real_peers`): one peer tool run the way its own
documentation runs it, on the model folder and questions its parent wrote, its measurements written as JSON.

    python -m medcore.bench.peer_jobs <trl|unsloth|lm_eval> <spec.json> <result.json>

* ``trl``: ``trl.SFTTrainer`` as TRL's QLoRA guide sets it up: ``BitsAndBytesConfig`` NF4 + double quantization +
  bf16 compute, a peft ``LoraConfig`` (the run's r/alpha/dropout/targets), gradient checkpointing, bf16, a
  prompt-completion dataset with ``completion_only_loss=True`` and ``padding_free=True``. On a CPU the base is
  loaded unquantized in float32 (bitsandbytes' 4-bit CPU path is not what the recipe is about); the row says so.
* ``unsloth``: ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` + ``get_peft_model`` (same r/alpha/dropout/
  targets, ``use_gradient_checkpointing="unsloth"``), trained by TRL's ``SFTTrainer`` with the same SFTConfig.
* ``lm_eval``: ``lm_eval.simple_evaluate`` on the ``medcore_medmcqa`` task (:mod:`medcore.harness`) over a dev.json
  of the questions medcore scored, through lm-evaluation-harness's ``HFLM`` (its own request building, batching
  and log-likelihood code) on the base model (4-bit as medcore loads it on CUDA) with medcore's trained adapter.

Training rows count real tokens as the Trainer receives them (padding-free batches hold no padding) and reuse
medcore's step clock (:class:`medcore.steps.ThroughputCallback`: steady = the steps after the first few) and
peak-memory reader, so the two sides are timed alike. Nothing here is imported by the bench process itself.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from medcore.records import package_versions

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "trl", "unsloth",
            "unsloth_zoo", "lm_eval")


def versions() -> dict[str, str | None]:
    return package_versions(PACKAGES)


def attention_implementation() -> tuple[str, str]:
    """TRL documents padding-free for FlashAttention 2/3; with no ``flash_attn`` installed (an offline machine),
    SDPA, which transformers gives a block-diagonal mask from the packed position ids."""
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", "flash_attn installed"
    return "sdpa", "flash_attn not installed: SDPA with transformers' packed-sequence mask"


def _dataset(spec: dict):
    import datasets

    rows = [json.loads(line) for line in Path(spec["data_file"]).read_text().splitlines() if line.strip()]
    return datasets.Dataset.from_list(rows)


def _sft_config(spec: dict, output_dir: str):
    from trl import SFTConfig

    from medcore.train import CHECKPOINTING as ckpt  # the argument's name in this transformers version

    on_cuda = spec["device"] == "cuda"
    return SFTConfig(
        output_dir=output_dir, per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["warmup"] + spec["steps"], learning_rate=spec["learning_rate"], optim=spec["optimizer"],
        lr_scheduler_type="constant", logging_steps=10_000, save_strategy="no", report_to="none",
        bf16=on_cuda, use_cpu=not on_cuda, seed=spec["seed"], dataloader_pin_memory=on_cuda,
        completion_only_loss=True, padding_free=True, max_length=None,  # padding-free without packing: no max_length
        **{ckpt: True, f"{ckpt}_kwargs": {"use_reentrant": False}})


def _train(trainer_cls, model, tokenizer, spec: dict, tmp: str, extra: dict) -> dict[str, Any]:
    """The SFTTrainer run, timed by medcore's step clock; real tokens counted from the batches' shapes."""
    import torch

    from medcore.measure import PeakMemory
    from medcore.steps import ThroughputCallback

    seen = {"tokens": 0, "examples": 0}

    class CountingSFTTrainer(trainer_cls):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:  # padding-free: one row, every position a real token
                mask = inputs.get("attention_mask")
                seen["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
                ids = inputs.get("position_ids")
                seen["examples"] += int((ids == 0).sum()) if ids is not None else int(inputs["input_ids"].shape[0])
            return super().compute_loss(model, inputs, *args, **kwargs)

    t0 = time.perf_counter()
    clock = ThroughputCallback(seen, skip=spec["warmup"])
    trainer = CountingSFTTrainer(model=model, args=_sft_config(spec, tmp), train_dataset=_dataset(spec),
                                 processing_class=tokenizer, callbacks=[clock], **extra)
    setup = time.perf_counter() - t0
    device = "cuda" if spec["device"] == "cuda" else "cpu"
    with PeakMemory(device) as mem:
        t1 = time.perf_counter()
        out = trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t1
    steady = clock.steady()
    steps = len(clock.steps)
    return {"steps": steps, "skipped_steps": steps - steady["steady_steps"], "steady_steps": steady["steady_steps"],
            "real_tokens": seen["tokens"], "examples": seen["examples"],
            "real_tokens_per_s": steady["steady_real_tokens_per_s"],
            "all_steps_real_tokens_per_s": seen["tokens"] / max(clock.step_seconds, 1e-9),
            "tokens_per_step": seen["tokens"] / max(steps, 1), "step_seconds": clock.step_seconds,
            "train_wall_seconds": wall, "trainer_setup_seconds": setup, "train_loss": out.training_loss,
            "peak_memory_bytes": int(mem.peak), "peak_memory_kind": mem.kind,
            "batch_size": spec["batch_size"], "optimizer": spec["optimizer"], "gradient_checkpointing": True,
            "completion_only_loss": True, "padding_free": bool(getattr(trainer, "padding_free", True)),
            "packing": False}


def _lora(spec: dict):
    from peft import LoraConfig

    lo = spec["lora"]
    return LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=lo["dropout"], target_modules=lo["targets"],
                      bias="none", task_type="CAUSAL_LM")


def run_trl(spec: dict, tmp: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTTrainer

    attn, why = attention_implementation()
    t0 = time.perf_counter()
    if spec["device"] == "cuda":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], quantization_config=bnb, dtype=torch.bfloat16,
                                                     device_map={"": 0}, attn_implementation=attn)
        base = "nf4+dq, bf16 compute"
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation=attn)
        base = "unquantized float32 (CPU: bitsandbytes 4-bit left out)"
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    load = time.perf_counter() - t0
    torch.manual_seed(spec["seed"])
    row = _train(SFTTrainer, model, tokenizer, spec, tmp, {"peft_config": _lora(spec)})
    return {**row, "load_seconds": load, "base": base, "attn_implementation": attn, "attn_reason": why}


def run_unsloth(spec: dict, tmp: str) -> dict[str, Any]:
    import unsloth  # noqa: F401 - first, so that it patches transformers, peft and trl before they are imported
    from unsloth import FastLanguageModel
    from trl import SFTTrainer

    lo = spec["lora"]
    t0 = time.perf_counter()
    model_dir, padded = vocab_fitted(spec["model_dir"], tmp)
    model, tokenizer = FastLanguageModel.from_pretrained(model_dir, max_seq_length=spec["max_seq_length"],
                                                         dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=lo["dropout"], target_modules=lo["module_names"],
        bias="none", use_gradient_checkpointing="unsloth", random_state=spec["seed"])
    load = time.perf_counter() - t0
    row = _train(SFTTrainer, model, tokenizer, spec, tmp, {})
    return {**row, "load_seconds": load, "base": "unsloth load_in_4bit (nf4)", "gradient_checkpointing": "unsloth",
            "embedding_rows_padded": padded}


def vocab_fitted(model_dir: str, tmp: str) -> tuple[str, dict | None]:
    """`model_dir`, or a copy in `tmp` whose embedding is padded with zero rows to the tokenizer's length.

    unsloth refuses a tokenizer with ids past the embedding (it would read out of bounds). A random Gemma-2B shape
    has Gemma-2B's 256,000 rows but borrows the Gemma 3 tokenizer (262,144 ids, the extra ones special tokens
    the prompts never use), so the copy adds 6,144 rows: no decoder FLOPs, 2.4 % more output-head rows."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer

    cfg, tokenizer = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    n = len(tokenizer)
    if n <= cfg.vocab_size:
        return model_dir, None
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    for name, w in weights.items():
        if w.dim() == 2 and w.shape[0] == cfg.vocab_size and ("embed" in name or "lm_head" in name):
            weights[name] = torch.cat([w, w.new_zeros(n - w.shape[0], w.shape[1])])
    out = Path(tmp) / "model-vocab-fitted"
    out.mkdir()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    rows = {"from": cfg.vocab_size, "to": n}
    cfg.vocab_size = n
    cfg.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out), rows


def run_lm_eval(spec: dict, tmp: str) -> dict[str, Any]:
    """``simple_evaluate`` through ``HFLM``; the model is loaded as medcore loads it and handed to HFLM (its
    ``load_in_4bit`` model argument is not accepted by transformers 5's from_pretrained)."""
    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from medcore.harness import TASK_DIR, TASK_NAME

    t0 = time.perf_counter()
    dtype = getattr(torch, spec["dtype"])
    quant = None
    if spec["device"] == "cuda" and spec["quantize"]:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype, quantization_config=quant,
                                                 device_map={"": 0} if spec["device"] == "cuda" else None)
    if spec.get("adapter_dir"):
        model = PeftModel.from_pretrained(model, spec["adapter_dir"])
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(spec["model_dir"]),
              batch_size=spec["batch_size"], device=spec["device"], max_length=spec.get("max_length"))
    load = time.perf_counter() - t0
    timed = {"seconds": 0.0, "requests": 0}
    inner = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):
        t = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        timed["seconds"] += time.perf_counter() - t
        timed["requests"] += len(requests)
        return out
    lm.loglikelihood = loglikelihood
    t1 = time.perf_counter()
    tasks = TaskManager(include_path=str(TASK_DIR), metadata={"data_dir": spec["data_dir"]})  # indexes every task
    t2 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK_NAME], log_samples=True, bootstrap_iters=0, task_manager=tasks)
    wall = time.perf_counter() - t2
    samples = sorted(out["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    loglik = [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples]
    return {"questions": len(samples), "scoring_wall_seconds": wall, "loglikelihood_seconds": timed["seconds"],
            "task_index_seconds": t2 - t1,
            "requests": timed["requests"], "load_seconds": load, "batch_size": spec["batch_size"],
            "accuracy": float(out["results"][TASK_NAME]["acc,none"]), "loglik": loglik,
            "pred": [max(range(4), key=row.__getitem__) for row in loglik],
            "base": "nf4+dq" if quant is not None else spec["dtype"], "adapter": bool(spec.get("adapter_dir"))}


JOBS = {"trl": run_trl, "unsloth": run_unsloth, "lm_eval": run_lm_eval}


def main(argv: list[str]) -> int:
    import tempfile

    name, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"medcore-peer-{name}-") as tmp:
        row = JOBS[name](spec, tmp)
    row.update(row_wall_seconds=time.perf_counter() - start, versions=versions())
    Path(out_path).write_text(json.dumps(row, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
