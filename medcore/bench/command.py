"""`python -m medcore bench`: the product's training and scoring against the usual recipes, timed in one run.

Every row names the code it timed (``code_path``). The medcore rows are the functions a user's command calls,
with the settings that command gets: the run configuration comes from ``--profile`` and ``--set`` exactly as for
``python -m medcore train`` (``--model`` sets ``model.source``), and the model and adapter are loaded as
:mod:`medcore.flows.workflows` loads them.

* training, **medcore**: :func:`medcore.train.train`, the Trainer with medcore's token-budget sampler, collator,
  answer-only loss and callbacks, for ``train.epochs`` passes (or ``train.max_steps`` steps) over the questions.
  Reported: the steady real (non-padding) tokens/s (the steps after the first few, which pick CUDA kernels and
  grow the allocator: train's own throughput callback), the rate over every step, the wall time of ``train()``
  (compile, first steps of each batch shape and checkpoint saving included) and of the whole row from model load,
  and the CUDA allocator's peak during training.
* training, **tutorial baseline** (the peer): the usual QLoRA tutorial loop, ``--steps`` batches of
  ``--baseline-batch-size`` questions padded to ``--pad-length`` tokens, the loss from the model's own forward
  (LM head and cross-entropy over every position, same answer-only labels), peft's defaults, bf16 autocast on
  CUDA; same model, started from the same adapter weights, same optimizer.
* scoring, **medcore**: :func:`medcore.evaluate.score_choices` with the config's evaluation settings (what
  ``medcore evaluate`` runs), timed on the first pass of the process and on a second pass.
* scoring, **harness-style** (the peer): lm-evaluation-harness's four log-likelihood requests per question, the
  model's own forward with the head over every position, at the same batch size.

* real peers (``--peers trl,unsloth,lm_eval``): TRL's ``SFTTrainer``, unsloth and lm-evaluation-harness themselves
  on the same questions, each in its own subprocess, with their ratio to the medcore rows above
  (:mod:`medcore.bench.real_peers`); the record's ``peers``.

Ceiling: a bf16 matmul timed in the same run. MFU counts 6N FLOP per trained real token and 2N per scored one
(N = non-embedding parameters). ``--levers`` reruns the medcore training row once per variant, each a set of
RunConfig overrides (:data:`medcore.bench.options.LEVERS`), from the same adapter weights. The record
(``records.write_run_record``) holds the run configuration as ``config.json`` and the bench options, rewritten
after each lever; its targets and the printed report come from :mod:`medcore.bench.report`.
"""
from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

import torch

from medcore import models
from medcore.bench.options import (SCORE_LEVER, BenchOptions, default_source, lever_variants, parse_args,
                                   variant_config)
from medcore.bench.peers import (
    adapter_state, baseline_batches, baseline_loss, encode_training_examples, free_memory, matmul_rate, mfu,
    objective_check, restore_adapter, score_flops_per_token, time_scoring, time_one_pass,
    time_training, to_device, train_flops_per_token,
)
from medcore.bench.real_peers import run_peers
from medcore.bench.report import format_report, targets
from medcore.records import portable_paths, write_run_record


def load_records(source: str | None, seed: int) -> list[dict]:
    from medcore.data import load_medmcqa

    ds = load_medmcqa(source or default_source(), "validation", on_invalid="skip")
    records = [r for r in ds.to_list() if r["answer"] is not None]
    random.Random(seed).shuffle(records)
    return records


# ---- the rows ---------------------------------------------------------------------------------------------------

def product_training(cfg, model, tokenizer, train_ds, adapter: dict) -> dict[str, Any]:
    """The medcore row: :func:`medcore.train.train` from the adapter weights `adapter`, in a scratch folder."""
    from medcore.train import train

    restore_adapter(model, adapter)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medcore-bench-") as tmp:
        m = train(cfg, model, tokenizer, train_ds, None, tmp).metrics
    wall = time.perf_counter() - start
    free_memory()
    return {"recipe": "medcore", "code_path": "medcore.train.train", "steps": m["global_step"],
            "examples": m["examples"], "real_tokens": m["real_tokens"],
            "real_tokens_per_s": m["steady_real_tokens_per_s"] or m["real_tokens_per_s"],
            "all_steps_real_tokens_per_s": m["real_tokens_per_s"], "steady_steps": m["steady_steps"],
            "examples_per_s": m["examples_per_s"], "step_seconds": m["step_seconds"], "train_wall_seconds": wall,
            "peak_memory_bytes": m["peak_memory_bytes"], "peak_memory_kind": m["peak_memory_kind"],
            "optimizer": m["optimizer"], "token_budget": cfg.train.token_budget,
            "max_batch_size": cfg.train.max_batch_size, "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "compile": cfg.train.compile, "lora_input_float32": cfg.train.lora_input_float32}


def baseline_training(cfg, model, records, tokenizer, opts: BenchOptions, adapter: dict, device) -> dict[str, Any]:
    """The tutorial loop on the first ``steps x baseline_batch_size`` questions (after its warm-up batches)."""
    from medcore.train import resolve_optimizer, set_checkpointing

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_warm, n_timed = opts.warmup * opts.baseline_batch_size, opts.steps * opts.baseline_batch_size
    examples = encode_training_examples(records[:n_warm + n_timed], tokenizer, opts.pad_length)
    warm = [to_device(b, device) for b in baseline_batches(examples[:n_warm], opts.baseline_batch_size, opts.pad_length, pad)]
    timed = [to_device(b, device) for b in baseline_batches(examples[n_warm:], opts.baseline_batch_size, opts.pad_length, pad)]
    set_checkpointing(model, cfg.train.gradient_checkpointing)
    optimizer = resolve_optimizer(cfg.train.optimizer, device.type == "cuda")
    row = time_training(model, warm, timed, baseline_loss, optimizer, cfg.train.learning_rate, device, adapter)
    check = objective_check(model, examples[:4], opts.pad_length, pad, device)
    return {"recipe": "baseline", "code_path": "tutorial loop: model(input_ids, labels).loss, padded batches",
            **row, "objective_check": check}


def scoring_rows(cfg, model, tokenizer, records, device) -> dict[str, Any]:
    from medcore.flows.workflows import eval_batch_size, eval_autocast

    size, autocast = eval_batch_size(cfg, device), eval_autocast(cfg, device)
    sc = time_scoring(model, tokenizer, records, size, device, autocast=autocast)
    sc["rows"][0]["code_path"] = "medcore.evaluate.score_choices"
    sc["rows"][1]["code_path"] = "harness-style: 4 log-likelihood requests per question"
    return sc


# ---- the run ----------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_bench(cfg, opts: BenchOptions, write: bool = True) -> dict[str, Any]:
    """Measure every row, print the report, write the record (``write``); returns the metrics."""
    import datasets

    from medcore import lora
    from medcore.flows import workflows

    device = workflows.device()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    records = load_records(opts.source, opts.seed)
    need = (opts.warmup + opts.steps) * opts.baseline_batch_size
    if need > len(records):
        raise ValueError(f"{len(records)} questions cannot feed {opts.steps} baseline steps of "
                         f"{opts.baseline_batch_size} plus {opts.warmup} warm-up steps ({need}); lower --steps")
    matmul = matmul_rate(device, opts.matmul_size or (8192 if device.type == "cuda" else 1024),
                         reps=10 if device.type == "cuda" else 3, warmup=3 if device.type == "cuda" else 1)
    print(f"[bench] bf16 {matmul['size']}^3 matmul: {matmul['flops'] / 1e12:.1f} TFLOP/s", flush=True)
    t0 = time.perf_counter()
    model, tokenizer = workflows.load(cfg)
    torch.manual_seed(cfg.train.seed)
    model = lora.attach_adapter(model, cfg.lora, quantized=cfg.quant.precision != "bf16")
    load_s = time.perf_counter() - t0
    info = models.describe_model(model)
    n_params = int(info["params_non_embedding"])
    adapter = adapter_state(model)
    train_records = records[:opts.n_train] if opts.n_train else records
    train_ds = datasets.Dataset.from_list(train_records)
    print(f"[bench] {cfg.model.source} loaded in {load_s:.1f} s; {n_params:,} non-embedding params", flush=True)

    base = baseline_training(cfg, model, records, tokenizer, opts, adapter, device)
    print(f"[bench] tutorial baseline: {base['real_tokens_per_s']:,.0f} real tokens/s", flush=True)
    med = product_training(cfg, model, tokenizer, train_ds, adapter)
    print(f"[bench] medcore.train.train: {med['real_tokens_per_s']:,.0f} real tokens/s steady, "
          f"{med['train_wall_seconds']:.1f} s", flush=True)
    fl_train, fl_score = train_flops_per_token(n_params), score_flops_per_token(n_params)
    for row in (med, base):
        row["mfu"] = mfu(row["real_tokens_per_s"], fl_train, matmul["flops"])
    n_q = opts.n_questions if opts.n_questions is not None else (None if device.type == "cuda" else 64)
    scored = records[:n_q] if n_q else records
    sc = scoring_rows(cfg, model, tokenizer, scored, device)  # with the adapter the medcore row trained
    for row in sc["rows"]:
        row["mfu"] = mfu(row["real_tokens_per_s"], fl_score, matmul["flops"])
    print(f"[bench] scoring: {sc['rows'][0]['questions_per_s']:,.0f} vs {sc['rows'][1]['questions_per_s']:,.0f} q/s",
          flush=True)
    peers = run_peers(opts.peers, cfg, model, tokenizer, train_records, scored, med, sc["rows"][0], sc["pred"][0],
                      sc["batch_size"], opts, device) if opts.peers else []
    # what this run measured or met; its settings are the record's config.json, its versions environment.json
    run = {"device_type": device.type, "device_name": device_name, "non_embedding_params": n_params,
           "load_seconds": load_s, "n_train_questions": len(train_ds), "n_questions_scored": len(scored),
           "score_batch_size": sc["batch_size"], "score_autocast": sc["autocast"], "matmul_size": matmul["size"],
           "source": opts.source or default_source(), "mean_prompt_tokens": sc["mean_prompt_tokens"]}
    real_weights = bool(info["real_weights"])
    metrics: dict[str, Any] = {
        "code_paths": {"training": "medcore.train.train", "scoring": "medcore.evaluate.score_choices"},
        "device": device_name, "model": cfg.model.source, "real_weights": real_weights,
        "matmul_tflops": matmul["flops"] / 1e12, "medcore_wall_seconds": load_s + med["train_wall_seconds"],
        "training": [med, base], "scoring": sc["rows"],
        "scoring_check": {k: v for k, v in sc.items() if k not in ("rows", "pred")},
        "peers": peers, "levers": [], "run": run}
    run_id = opts.run_id or f"bench-{_slug(cfg.model.source.partition(':')[2])}-{_slug(device_name)}"

    def save(final: bool) -> None:
        metrics["targets"], metrics["complete"] = targets(metrics, cfg), final
        if write:
            metrics["record"] = str(write_run_record(
                opts.out, run_id, config=portable_paths(cfg.to_dict()), metrics=portable_paths(metrics),
                overwrite=True, headline=opts.headline, extra=portable_paths({
                    "real_weights": real_weights, "kind": "bench", "model_source": cfg.model.source,
                    "options": asdict(opts)})))

    variants = lever_variants(opts.levers, cfg, opts)
    save(final=not variants)
    for i, (lever, label, overrides) in enumerate(variants):
        row: dict[str, Any] = {"lever": lever, "variant": label, "overrides": overrides, "error": None}
        try:
            vcfg = variant_config(cfg, overrides)
            if lever == SCORE_LEVER:
                row.update(time_one_pass(model, tokenizer, scored, vcfg.eval.batch_size, device, cold=True,
                                         autocast=sc["autocast"], reference=sc["pred"]))
            else:
                row.update(product_training(vcfg, model, tokenizer, train_ds, adapter))
                row["mfu"] = mfu(row["real_tokens_per_s"], fl_train, matmul["flops"])
        except Exception as err:  # noqa: BLE001 - one lever's failure (e.g. out of memory) is recorded
            free_memory()
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        metrics["levers"].append(row)
        print(f"[bench] lever {label}: " + (row["error"] or f"{row.get('real_tokens_per_s', row.get('questions_per_s')):,.0f}"),
              flush=True)
        save(final=i == len(variants) - 1)
    print(format_report(metrics, cfg), flush=True)
    if write:
        print(f"[bench] record written to {metrics['record']}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    cfg, opts = parse_args(argv)
    run_bench(cfg, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
