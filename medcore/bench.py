"""`python -m medcore bench`: medcore's training and scoring paths against the usual baselines, in one run.

Both sides run on the same quantized model with the same adapter (NF4 + double quantization, bf16 compute,
LoRA r=16 on every linear layer; ``--precision bf16`` for an unquantized base) and the same MedMCQA questions.

Training (a plain loop: forward, backward, optimizer step, after ``--warmup`` untimed steps and one untimed step for
each batch shape among the timed batches (``--no-warm-shapes`` leaves that out); *not* the Trainer,
so that both recipes are timed the same way and data loading stays outside the clock. The pass over the timed
batches is there because token-budget batches come in many shapes and, on the H200, a step of a shape not seen
before was measured slower: the medcore row of ``bench-gemma-2b-nvidia-h200-levers`` (3 warm-up steps only) gave
3,221 real tokens/s and the same recipe re-run unchanged right after it 7,376 and 6,986. ``--with-trainer``
also times :func:`medcore.train.train` on the same examples as a check that the loop represents it):

* **medcore**: the examples of ``--steps`` baseline batches (the *same* examples, so the same real tokens), in
  token-budget batches (``prompts.token_budget_batches``: length-sorted, ``--token-budget`` tokens per batch
  padding included, at most ``--max-batch-size`` rows), the LM head at the labelled positions only
  (``train.answer_only_loss``); optional gradient checkpointing; under CUDA's bf16 autocast, LoRA inputs left in
  bf16 (``train.lora_inputs_in_bf16``: peft's float32 copy of each, which autocast casts back, skipped). Its number
  of steps is however many budget batches those examples fill.
* **baseline**, as the usual QLoRA tutorials write it: ``--steps`` batches of ``--baseline-batch-size`` (16)
  examples padded to ``--pad-length`` (256), loss from ``model(input_ids, attention_mask, labels).loss`` (the
  LM head and the cross-entropy over every position). Labels are the same answer-only labels, so both minimise
  the same objective (``objective_check`` in the record compares the two losses on one batch). The baseline keeps
  peft's defaults, including its float32 copy of each LoRA input. Tutorials also call peft's
  ``prepare_model_for_kbit_training``, which casts the frozen embedding to fp32 (about 2 GB more for Gemma-2B);
  that is *not* reproduced here, which flatters the baseline's memory.

Both use the same optimizer (``--optimizer auto``: paged 8-bit AdamW on CUDA, AdamW on CPU, as ``train.py``),
the same learning rate, bf16 autocast on CUDA, and start from the same adapter weights. Reported: real
(non-padding) tokens/s, examples/s, padding share, peak memory (CUDA allocator peak during the timed steps; on
CPU the peak resident set size sampled during them).

Scoring, on ``--n-questions`` questions (default all on CUDA, 64 on CPU), each scorer timed twice: the first pass
of the process (``cold_seconds``; the 10-s target reads it) and a second pass (``seconds``, questions/s and the
ratio); ``--score-autocast`` runs both under bf16 autocast. The adapter scored is the one the timed training left.
The two scorers:

* **medcore**: :func:`medcore.evaluate.score_choices` (one forward per question, the head at the last position);
* **harness-style**: the lm-evaluation-harness's four log-likelihood requests per question (context +
  `` A``..`` D``, each its own sequence, the model's own forward with the head over every position, log-softmax
  over every real position), in length-sorted batches of the same size (``--score-batch-size``). The
  log-softmax runs in float32 one row at a time (the harness does it in the model dtype on the padded batch);
  next to the forward that is a few per cent either way. Both timings include tokenization.

Ceiling: a large bf16 matmul timed in the same run (8192^3 on CUDA with CUDA events, ``--matmul-size`` on
CPU). Model FLOPs count 6 x non-embedding parameters per trained real token and 2 x per scored real token
(the head, padding and recomputation are not counted: they are the waste being measured). For a frozen base
with LoRA the hardware does ~4N per token without checkpointing (no weight gradients) and ~6N with it, so
without checkpointing the 6N figure overstates the hardware's utilisation by up to 1.5x.

``--compile`` compiles each decoder layer for medcore's recipe (``train.compile``). ``--profile`` adds a
torch.profiler summary of warm training steps and scoring batches (GPU busy share, operator calls, top operators).

``--levers`` (comma list, or ``all``) reruns the medcore training recipe once per variant, changing one setting at a
time: ``attn`` (sdpa/eager), ``compile`` (toggled), ``optim`` (the other optimizer), ``budget`` (``--budgets``, the
row cap scaled alongside), ``ckpt`` (toggled), ``repeat`` (unchanged: the drift check), ``cudnn`` (SDPA's cuDNN
backend off, plus cold-then-warm scoring passes at two new batch sizes with it on and off), ``peft_cast`` (peft's
float32 copy of each LoRA input kept, as peft does by default; medcore skips it under autocast; CUDA only). The
scoring levers time the one-pass scorer alone: ``score_batch`` (``--score-batch-sizes``) and ``score_autocast``
(toggled). Each is a row; the record is rewritten after every lever, so a run stopped midway keeps what it measured.

Prints a table with ratios (medcore / baseline), the fraction of the ceiling, and whether each target of issue
#7 is met, and writes a run record (``results.write_run_record``) to ``--out``/``bench-<model>-<device>``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medcore.bench_recipes import (  # re-exported: bench.<name> keeps working for tests and callers
    _to,
    adapter_state,
    attn_implementation,
    baseline_batches,
    baseline_loss,
    batch_tokens,
    encode_training_examples,
    harness_style_scores,
    distinct_shapes,
    cold_sizes,
    free_memory,
    lever_variants,
    matmul_rate,
    medcore_batches,
    medcore_loss,
    medcore_recipe,
    medcore_step_batches,
    mfu,
    non_embedding_parameters,
    objective_check,
    profile_scoring,
    profile_training,
    resolve_optimizer,
    restore_adapter,
    run_lever,
    run_trainer,
    score_flops_per_token,
    set_checkpointing,
    time_one_pass,
    time_scoring,
    time_training,
    train_flops_per_token,
)


ROOT = Path(__file__).resolve().parent.parent
SCORE_TARGET_QUESTIONS = 4183  # the MedMCQA validation split
LEVERS = ("attn", "compile", "optim", "budget", "ckpt", "repeat", "cudnn", "peft_cast", "score_batch",
          "score_autocast")
SCORING_VARIANTS = ("score_batch", "score_autocast", "score_cold")  # variants that time the one-pass scorer
TARGET_CONDITIONS = "CUDA, random:gemma-2b, nf4 + double quantization"


@dataclass
class BenchConfig:
    model: str = "random:gemma-2b"
    precision: str = "nf4"  # nf4 (+ double quantization) | bf16
    token_budget: int = 4096
    max_batch_size: int = 64
    steps: int = 20  # baseline optimizer steps; medcore trains on the same examples
    warmup: int = 3
    warm_all_shapes: bool = True  # also one untimed pass over the timed batches (every batch shape seen once)
    baseline_batch_size: int = 16
    pad_length: int = 256
    n_questions: int | None = None  # None: every loaded question on CUDA, 64 on CPU
    score_batch_size: int | None = None  # None: 64 on CUDA, 16 on CPU
    budgets: list[int] = field(default_factory=lambda: [4096, 8192, 16384])  # the budget lever's token budgets
    score_batch_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # the score_batch lever's
    profile: bool = False  # torch.profiler over some warm medcore training steps and scoring batches
    gradient_checkpointing: bool = False
    compile: bool = False  # medcore's recipe with each decoder layer compiled (train.compile)
    score_autocast: bool = False  # both scorers under bf16 autocast
    optimizer: str = "auto"  # auto | adamw_torch | paged_adamw_8bit
    learning_rate: float = 2e-4
    lora_r: int = 16
    levers: list[str] = field(default_factory=list)
    with_trainer: bool = False
    matmul_size: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    source: str | None = None  # None: shared/medmcqa in the checkout or beside it, else the mirror
    out: str = "results/bench"
    run_id: str | None = None
    seed: int = 0


# ---- arguments and data --------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="medcore bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model, help="random:gemma-2b | embedded:gemma-3-270m | random:tiny-gemma | ...")
    p.add_argument("--precision", default=d.precision, choices=["nf4", "bf16"], help="nf4 = NF4 + double quantization")
    p.add_argument("--token-budget", type=int, default=d.token_budget)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--steps", type=int, default=d.steps, help="timed baseline steps (medcore: the same examples)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps of each recipe first")
    p.add_argument("--no-warm-shapes", dest="warm_all_shapes", action="store_false",
                   help="skip the untimed pass over the timed batches (then new batch shapes are timed cold)")
    p.add_argument("--baseline-batch-size", type=int, default=d.baseline_batch_size)
    p.add_argument("--pad-length", type=int, default=d.pad_length)
    p.add_argument("--n-questions", type=int, default=None, help="questions scored (default: all on CUDA, 64 on CPU)")
    p.add_argument("--score-batch-size", type=int, default=None, help="default 64 on CUDA, 16 on CPU")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="medcore's recipe with torch.compile of each decoder layer (train.compile)")
    p.add_argument("--score-autocast", action="store_true", help="both scorers under bf16 autocast")
    p.add_argument("--optimizer", default=d.optimizer, choices=["auto", "adamw_torch", "paged_adamw_8bit"])
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--levers", default="", help=f"comma list of {','.join(LEVERS)} or 'all'")
    p.add_argument("--budgets", default=",".join(map(str, d.budgets)),
                   help="token budgets of the budget lever (max rows scaled alongside)")
    p.add_argument("--score-batch-sizes", default=",".join(map(str, d.score_batch_sizes)),
                   help="batch sizes of the score_batch lever (the one-pass scorer alone)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler summary of warm medcore training steps and scoring batches in the record")
    p.add_argument("--with-trainer", action="store_true", help="also time medcore.train.train on the same examples")
    p.add_argument("--matmul-size", type=int, default=None, help="ceiling matmul size (default 8192 CUDA, 1024 CPU)")
    p.add_argument("--source", default=None, help="MedMCQA source (default: shared/medmcqa if present, else mirror)")
    p.add_argument("--out", default=d.out, help="folder for the run record")
    p.add_argument("--run-id", default=None, help="default bench-<model>-<device>")
    p.add_argument("--seed", type=int, default=d.seed)
    argv = list(argv or [])
    if argv[:1] == ["--"]:  # `python -m medcore bench -- --model ...` (argparse REMAINDER keeps the separator)
        argv = argv[1:]
    a = p.parse_args(argv)
    levers = [x.strip() for x in a.levers.split(",") if x.strip()]
    levers = list(LEVERS) if levers == ["all"] else levers
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        p.error(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)} or all")
    for name in ("token_budget", "max_batch_size", "steps", "baseline_batch_size", "pad_length"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.token_budget < a.pad_length:
        p.error(f"--token-budget {a.token_budget} is below --pad-length {a.pad_length}: a long example would not fit")
    sizes = {}
    for name in ("budgets", "score_batch_sizes"):
        flag = f"--{name.replace('_', '-')}"
        try:
            sizes[name] = [int(x) for x in getattr(a, name).split(",") if x.strip()]
        except ValueError:
            p.error(f"{flag} {getattr(a, name)!r}: give whole numbers separated by commas")
        if not sizes[name] or min(sizes[name]) < 1:
            p.error(f"{flag} {getattr(a, name)!r}: give at least one size, each at least 1")
    short = [b for b in sizes["budgets"] if b < a.pad_length]
    if short:
        p.error(f"--budgets {short} below --pad-length {a.pad_length}: a long example would not fit")
    values = {k: v for k, v in vars(a).items() if k not in ("levers", "budgets", "score_batch_sizes")}
    return BenchConfig(levers=levers, **sizes, **values)


def default_source() -> str:
    """shared/medmcqa inside the checkout (it travels to the lent GPU), then ../shared/medmcqa, else the mirror."""
    for folder in (ROOT / "shared" / "medmcqa", ROOT.parent / "shared" / "medmcqa"):
        if (folder / "dev.json").is_file():
            return f"local:{folder}"
    return "mirror"


def load_records(source: str | None) -> list[dict]:
    from medcore.data import load_medmcqa

    ds = load_medmcqa(source or default_source(), "validation", on_invalid="skip")
    return [r for r in ds.to_list() if r["answer"] is not None]


# ---- targets and report --------------------------------------------------------------------------------------

def targets(metrics: dict[str, Any], cond: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #7's targets, computed from the measured numbers; `conditions_match` says whether this run is
    under the targets' conditions (H200-class CUDA, Gemma-2B shape, NF4 + DQ + LoRA)."""
    train_rows = {r["recipe"]: r for r in metrics["training"]}
    med, base = train_rows["medcore"], train_rows["baseline"]
    one, harness = metrics["scoring"]
    general = cond["device_type"] == "cuda" and cond["model"] == "random:gemma-2b" and cond["precision"] == "nf4"
    mem_row, mem_from = memory_target_row(metrics, cond)
    mem_ok = general and mem_from is not None
    # the split scored once, as a user does: the first pass of the process when the run timed one
    first = one.get("cold_seconds")
    project = (first * SCORE_TARGET_QUESTIONS / one["questions"] if first
               else SCORE_TARGET_QUESTIONS / one["questions_per_s"])
    rows = [
        ("training real tokens/s, medcore / baseline", ">= 3x", med["real_tokens_per_s"] / base["real_tokens_per_s"],
         lambda v: v >= 3, "x", general),
        ("training fraction of the bf16 matmul ceiling (MFU)", ">= 35%", med["mfu"], lambda v: v >= 0.35, "%", general),
        (f"seconds to score {SCORE_TARGET_QUESTIONS:,} questions" + (", first pass" if first else "") +
         ("" if one["questions"] == SCORE_TARGET_QUESTIONS else f" (projected from {one['questions']})"),
         "<= 10 s", project, lambda v: v <= 10, "s", general),
        ("scoring questions/s, one-pass / harness-style", ">= 3.5x",
         one["questions_per_s"] / harness["questions_per_s"], lambda v: v >= 3.5, "x", general),
        ("QLoRA training peak memory at 4,096 tokens/batch with checkpointing"
         + (f" ({mem_from})" if mem_from not in (None, "medcore") else ""), "<= 6 GB",
         mem_row["peak_memory_bytes"] / 1e9, lambda v: v <= 6, "GB", mem_ok),
    ]
    return [{"target": name, "goal": goal, "measured": value, "unit": unit, "met": bool(test(value)),
             "conditions_match": match} for name, goal, value, test, unit, match in rows]


def memory_target_row(metrics: dict[str, Any], cond: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The training row measured at the memory target's setting (4,096 tokens per batch, checkpointing on):
    the medcore row if the run's base recipe is that, else the first budget or checkpointing lever row that
    is; (the medcore row, None) if no row is. A row's other settings (compile, optimizer) are the run's."""
    med = next(r for r in metrics["training"] if r["recipe"] == "medcore")
    if cond["token_budget"] == 4096 and cond["gradient_checkpointing"]:
        return med, "medcore"
    for row in metrics.get("levers", []):
        if (row.get("lever") in ("budget", "ckpt") and not row.get("error") and row.get("token_budget") == 4096
                and row.get("gradient_checkpointing")):
            return row, f"lever row '{row['variant']}'"
    return med, None


def _f(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "GB":
        return f"{v / 1e9:.2f} GB" if v > 1e6 else f"{v:.2f} GB"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "s":
        return f"{v:.2f} s"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_report(m: dict[str, Any]) -> str:
    c = m["conditions"]
    tr = {r["recipe"]: r for r in m["training"]}
    med, base = tr["medcore"], tr["baseline"]
    one, har = m["scoring"]
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    head = (f"medcore bench: {c['model']} ({'real' if c['real_weights'] else 'random'} weights), {c['precision']}, "
            f"LoRA r={c['lora_r']} all-linear, {c['device_name']}; torch {c['torch']}, transformers "
            f"{c['transformers']}, bitsandbytes {c['bitsandbytes']}\n"
            f"ceiling: bf16 {c['matmul_size']}^3 matmul = {_rate(m['matmul_tflops'] * 1e12)}; non-embedding params "
            f"{c['non_embedding_params']:,}; mean prompt {c['mean_prompt_tokens']:.1f} tokens")
    tr_rows = [
        ["steps timed", str(med["steps"]), str(base["steps"]), ""],
        ["examples (same)", str(med["examples"]), str(base["examples"]), ""],
        ["real tokens (same)", str(med["real_tokens"]), str(base["real_tokens"]), ""],
        ["padding share", _f(med["padding_share"], "%"), _f(base["padding_share"], "%"), ""],
        ["real tokens/s", _f(med["real_tokens_per_s"]), _f(base["real_tokens_per_s"]),
         _f(ratio(med["real_tokens_per_s"], base["real_tokens_per_s"]), "x")],
        ["examples/s", _f(med["examples_per_s"]), _f(base["examples_per_s"]),
         _f(ratio(med["examples_per_s"], base["examples_per_s"]), "x")],
        ["peak memory", _f(med["peak_memory_bytes"], "GB"), _f(base["peak_memory_bytes"], "GB"),
         _f(ratio(med["peak_memory_bytes"], base["peak_memory_bytes"]), "x")],
        ["MFU (6N/token)", _f(med["mfu"], "%"), _f(base["mfu"], "%"), _f(ratio(med["mfu"], base["mfu"]), "x")],
    ]
    extra = [r for k, r in tr.items() if k not in ("medcore", "baseline")]
    text = [head, "", f"training (token budget {c['token_budget']}, baseline {c['baseline_batch_size']} x "
            f"{c['pad_length']}, checkpointing {'on' if c['gradient_checkpointing'] else 'off'}, "
            f"{'compiled decoder layers, ' if c.get('compile') else ''}"
            f"{c['optimizer']}; peak memory: {med['peak_memory_kind']})",
            _table(["", "medcore", "baseline", "medcore/baseline"], tr_rows)]
    for r in extra:
        text.append(f"  {r['recipe']}: {_f(r['real_tokens_per_s'])} real tokens/s, {_f(r['examples_per_s'])} "
                    f"examples/s, peak {_f(r['peak_memory_bytes'], 'GB')} ({r['peak_memory_kind']})")
    oc = m["objective_check"]
    text.append(f"  same objective: loss {oc['medcore_loss']:.4f} (medcore) vs {oc['baseline_loss']:.4f} "
                f"(baseline) on {oc['rows']} rows")
    sc_rows = [
        ["forward sequences", str(one["forward_sequences"]), str(har["forward_sequences"]), ""],
        ["real tokens", str(one["real_tokens"]), str(har["real_tokens"]), ""],
        ["seconds, first pass (cold)", _f(one.get("cold_seconds"), "s"), _f(har.get("cold_seconds"), "s"),
         _f(ratio(har.get("cold_seconds") or 0, one.get("cold_seconds") or 0), "x")],
        ["seconds, second pass", _f(one["seconds"], "s"), _f(har["seconds"], "s"),
         _f(ratio(har["seconds"], one["seconds"]), "x")],
        ["questions/s", _f(one["questions_per_s"]), _f(har["questions_per_s"]),
         _f(ratio(one["questions_per_s"], har["questions_per_s"]), "x")],
        ["peak memory", _f(one["peak_memory_bytes"], "GB"), _f(har["peak_memory_bytes"], "GB"), ""],
        ["MFU (2N/token)", _f(one["mfu"], "%"), _f(har["mfu"], "%"), ""],
    ]
    s = m["scoring_check"]
    text += ["", f"scoring ({one['questions']} questions, batch {s['batch_size']}, "
             f"{'bf16 autocast, ' if s.get('autocast') else ''}timings include tokenization)",
             _table(["", "one-pass", "harness-style", "one-pass/harness"], sc_rows),
             f"  same choices on {_f(s['agreement'], '%')} of {s['compared']} questions (max |logprob diff| "
             f"{_f(s['max_abs_logprob_diff'])}); accuracy {_f(s['accuracy'], '%')}"]
    train_levers = [r for r in m.get("levers", []) if r.get("lever") not in SCORING_VARIANTS]
    score_levers = [r for r in m.get("levers", []) if r.get("lever") in SCORING_VARIANTS]
    if train_levers:
        lv = []
        for r in train_levers:
            if r.get("error"):
                lv.append([r["variant"], "failed: " + r["error"][:60], "", "", "", ""])
            else:
                lv.append([r["variant"], _f(r["real_tokens_per_s"]), _f(r["examples_per_s"]),
                           _f(r["peak_memory_bytes"], "GB"), _f(r["mfu"], "%"),
                           _f(ratio(r["real_tokens_per_s"], med["real_tokens_per_s"]), "x")])
        text += ["", "levers (medcore training recipe, one change each; base = the medcore row above)",
                 _table(["variant", "real tok/s", "ex/s", "peak", "MFU", "vs base"], lv)]
    if score_levers:
        sv = [[r["variant"], _f(r.get("cold_seconds"), "s"), _f(r["seconds"], "s"), _f(r["questions_per_s"]),
               _f(r["peak_memory_bytes"], "GB"), _f(r["mfu"], "%"),
               _f(ratio(r["questions_per_s"], one["questions_per_s"]), "x"),
               _f(r.get("agreement_with_base_scoring"), "%")] for r in score_levers]
        text += ["", f"one-pass scoring variants ({one['questions']} questions; base = batch {s['batch_size']} above; "
                 "seconds: a pass after one untimed batch; cold: the first pass, every shape new)",
                 _table(["variant", "cold", "seconds", "q/s", "peak", "MFU", "vs base", "same choices"], sv)]
    for name, pr in (m.get("profile") or {}).items():
        if "error" in pr:
            text += ["", f"profile, {name}: failed: {pr['error']}"]
            continue
        unit = "step" if name == "train" else "batch"
        text += ["", f"profile, {name}: {pr['wall_ms_per_step']:.1f} ms per {unit} wall, "
                 f"{pr['gpu_kernel_ms_per_step']:.1f} ms of GPU kernels ({_f(pr['gpu_busy_share'], '%')} busy), "
                 f"{pr['kernels_per_step']:.0f} kernels and {pr['aten_calls_per_step']:.0f} aten calls per {unit}",
                 _table(["op (most GPU time)", "calls", "GPU ms", "CPU ms"],
                        [[o["name"][:60], f"{o['calls_per_step']:.0f}", f"{o['self_gpu_ms_per_step']:.2f}",
                          f"{o['self_cpu_ms_per_step']:.2f}"] for o in pr["top_gpu_ops"][:10]]),
                 _table(["op (most CPU time)", "calls", "GPU ms", "CPU ms"],
                        [[o["name"][:60], f"{o['calls_per_step']:.0f}", f"{o['self_gpu_ms_per_step']:.2f}",
                          f"{o['self_cpu_ms_per_step']:.2f}"] for o in pr["top_cpu_ops"][:10]])]
    tg = [[t["target"], t["goal"], _f(t["measured"], t["unit"]), "met" if t["met"] else "NOT met",
           "yes" if t["conditions_match"] else "no"] for t in m["targets"]]
    text += ["", f"targets (conditions: {TARGET_CONDITIONS}; 'conditions' = whether this run is under them)",
             _table(["target", "goal", "measured", "", "conditions"], tg)]
    return "\n".join(text)


# ---- the run ---------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "bitsandbytes", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    return out


def _guarded(fn, *args) -> dict[str, Any]:
    """A profile is an aid, not a measurement the record depends on: its failure is recorded, not raised."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - e.g. no CUPTI for the CUDA profiler
        free_memory()
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}


def run_bench(cfg: BenchConfig, write: bool = True) -> dict[str, Any]:
    """Measure everything, print the report, write the record (``write``); returns metrics + record path."""
    from medcore import lora, models, quantize
    from medcore.config import LoraConfig, QuantConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    optimizer = resolve_optimizer(cfg.optimizer, device)
    n_questions = cfg.n_questions if cfg.n_questions is not None else (None if device.type == "cuda" else 64)
    score_bs = cfg.score_batch_size or (64 if device.type == "cuda" else 16)
    source = cfg.source or default_source()
    records = load_records(source)
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    records = [records[i] for i in order]
    tokenizer = models.load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_timed = cfg.steps * cfg.baseline_batch_size
    n_warm = cfg.warmup * max(cfg.baseline_batch_size, cfg.max_batch_size)
    if n_timed + n_warm > len(records):
        most = max(0, (len(records) - n_warm) // cfg.baseline_batch_size)
        raise ValueError(f"{len(records)} questions from {source} cannot feed {cfg.steps} steps of "
                         f"{cfg.baseline_batch_size} plus warm-up ({n_timed + n_warm}); use at most --steps {most} "
                         f"with --warmup {cfg.warmup}, or fewer warm-up steps")
    matmul = matmul_rate(device, cfg.matmul_size or (8192 if device.type == "cuda" else 1024),  # after the checks
                         reps=10 if device.type == "cuda" else 3, warmup=3 if device.type == "cuda" else 1)
    print(f"[bench] bf16 {matmul['size']}^3 matmul: {_rate(matmul['flops'])}", flush=True)
    encoded = encode_training_examples(records[:n_timed + n_warm], tokenizer, cfg.pad_length)
    examples = {"timed": encoded[:n_timed], "warm": encoded[n_timed:]}

    t0 = time.perf_counter()
    model = quantize.load_quantized(cfg.model, QuantConfig(cfg.precision, double_quant=True), device=device)
    load_s = time.perf_counter() - t0
    info = models.describe_model(model)
    n_params = int(info["params_non_embedding"])
    torch.manual_seed(cfg.seed)
    lora_cfg = LoraConfig(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.05, targets="all-linear")
    model = lora.attach_adapter(model, lora_cfg, quantized=cfg.precision != "bf16")
    model.config.use_cache = False
    set_checkpointing(model, cfg.gradient_checkpointing)
    print(f"[bench] {cfg.model} loaded ({cfg.precision}) in {load_s:.1f} s; {n_params:,} non-embedding params",
          flush=True)
    state = adapter_state(model)
    attn = attn_implementation(model)

    check = objective_check(model, examples["timed"][:min(4, n_timed)], cfg.pad_length, pad_id, device)
    med_warm, med_timed = medcore_step_batches(examples, cfg.token_budget, cfg.max_batch_size, cfg, pad_id, device)
    base_warm = [_to(b, device) for b in baseline_batches(examples["warm"][:cfg.warmup * cfg.baseline_batch_size],
                                                         cfg.baseline_batch_size, cfg.pad_length, pad_id)]
    base_timed = [_to(b, device) for b in baseline_batches(examples["timed"], cfg.baseline_batch_size,
                                                          cfg.pad_length, pad_id)]
    training = []
    for name, warm, timed, loss_fn in (("medcore", med_warm, med_timed, medcore_loss),
                                       ("baseline", base_warm, base_timed, baseline_loss)):
        # token-budget batches differ in shape; the first step of each shape is slow on CUDA (warm_shapes)
        with (medcore_recipe(model, device, cfg.compile) if name == "medcore" else contextlib.nullcontext()):
            row = {"recipe": name, **time_training(model, warm, timed, loss_fn, optimizer, cfg.learning_rate,
                                                   device, state, warm_shapes=cfg.warm_all_shapes)}
        training.append(row)
        print(f"[bench] training {name}: {row['real_tokens_per_s']:.1f} real tokens/s", flush=True)
    profile = {}
    if cfg.profile:  # the first few timed batches of the medcore recipe (stepped once untimed first)
        with medcore_recipe(model, device, compile=False):  # eager: the profile reads operator calls
            profile["train"] = _guarded(profile_training, model, med_timed[:6], medcore_loss, optimizer,
                                        cfg.learning_rate, device, state)
    del med_warm, med_timed, base_warm, base_timed
    if cfg.with_trainer:
        restore_adapter(model, state)
        training.append(run_trainer(model, tokenizer, cfg, examples["timed"]))
    ftrain = train_flops_per_token(n_params)
    for row in training:
        row["mfu"] = mfu(row["real_tokens_per_s"], ftrain, matmul["flops"])
        row["model_tflops"] = row["real_tokens_per_s"] * ftrain / 1e12

    # scoring uses the adapter as the timed training left it (LoRA B no longer zero, so the adapter's path
    # changes the scores and the scorers' agreement checks it too)
    score_records = records[:n_questions] if n_questions else records
    scored = adapter_state(model)  # the scoring levers score with this same adapter
    sc = time_scoring(model, tokenizer, score_records, score_bs, device, autocast=cfg.score_autocast)
    fscore = score_flops_per_token(n_params)
    for row in sc["rows"]:
        row["mfu"] = mfu(row["real_tokens_per_s"], fscore, matmul["flops"])
        row["model_tflops"] = row["real_tokens_per_s"] * fscore / 1e12
    print(f"[bench] scoring: {sc['rows'][0]['questions_per_s']:.1f} vs {sc['rows'][1]['questions_per_s']:.1f} q/s",
          flush=True)

    if cfg.profile:
        profile["score"] = _guarded(profile_scoring, model, tokenizer, score_records[:4 * score_bs], score_bs, device)
    for name, pr in profile.items():
        print(f"[bench] profile, {name}: " + (f"failed: {pr['error']}" if "error" in pr else
              f"{pr['wall_ms_per_step']:.1f} ms per step wall, {pr['gpu_kernel_ms_per_step']:.1f} ms of GPU kernels "
              f"({pr['gpu_busy_share']:.0%} busy)"), flush=True)

    v = _versions()
    conditions = {
        "device_type": device.type, "device_name": device_name, **v, "model": cfg.model,
        "real_weights": bool(info["real_weights"]), "model_type": info["model_type"],
        "precision": cfg.precision, "double_quant": cfg.precision == "nf4", "compute_dtype": "bfloat16",
        "autocast_bf16": device.type == "cuda", "lora_r": cfg.lora_r, "lora_targets": "all-linear",
        "non_embedding_params": n_params, "params_total": int(info["params_total"]),
        "token_budget": cfg.token_budget, "max_batch_size": cfg.max_batch_size,
        "baseline_batch_size": cfg.baseline_batch_size, "pad_length": cfg.pad_length,
        "score_batch_size": score_bs, "steps": cfg.steps, "warmup": cfg.warmup,
        "warm_all_shapes": cfg.warm_all_shapes,
        "gradient_checkpointing": cfg.gradient_checkpointing, "compile": cfg.compile,
        "lora_inputs_bf16": device.type == "cuda",  # medcore's row skips peft's float32 copy (autocast only)
        "score_autocast": cfg.score_autocast, "optimizer": optimizer, "attn_implementation": attn,
        "learning_rate": cfg.learning_rate, "source": source, "n_questions_scored": len(score_records),
        "mean_prompt_tokens": sc["mean_prompt_tokens"],
        "mean_train_example_tokens": float(np.mean([e["length"] for e in examples["timed"]])),
        "matmul_size": matmul["size"], "torch_threads": torch.get_num_threads(), "load_seconds": load_s,
    }
    levers: list[dict[str, Any]] = []
    metrics = {
        "device": device_name, "model": cfg.model, "real_weights": conditions["real_weights"],
        "matmul_tflops": matmul["flops"] / 1e12,
        "train_speedup_real_tokens": training[0]["real_tokens_per_s"] / training[1]["real_tokens_per_s"],
        "train_mfu": training[0]["mfu"], "train_peak_memory_gb": training[0]["peak_memory_bytes"] / 1e9,
        "score_speedup": sc["rows"][0]["questions_per_s"] / sc["rows"][1]["questions_per_s"],
        "score_questions_per_s": sc["rows"][0]["questions_per_s"],
        "score_seconds_4183": SCORE_TARGET_QUESTIONS / sc["rows"][0]["questions_per_s"],
        "training": training, "scoring": sc["rows"],
        "scoring_check": {k: v for k, v in sc.items() if k not in ("rows", "pred")},
        "objective_check": check, "levers": levers, "matmul": matmul, "conditions": conditions,
    }
    if profile:
        metrics["profile"] = profile
    run_id = cfg.run_id or f"bench-{_slug(cfg.model.partition(':')[2])}-{_slug(device_name)}"

    def save(final: bool) -> None:
        """The record so far (rewritten after every lever, so that a run stopped midway keeps what it measured)."""
        metrics["targets"] = targets(metrics, conditions)
        metrics["complete"] = final
        if write:
            from medcore.results import write_run_record

            path = write_run_record(cfg.out, run_id, config=asdict(cfg), metrics=metrics,
                                    extra={"real_weights": conditions["real_weights"], "model_source": cfg.model,
                                           "kind": "bench"}, overwrite=True)
            metrics["record"] = str(path)

    variants = lever_variants(cfg.levers, cfg, optimizer, attn)
    if variants:  # the record so far, before the levers run
        save(final=False)
    for i, variant in enumerate(variants):
        if variant["lever"] in SCORING_VARIANTS:
            size = variant.get("score_batch_size") or score_bs
            restore_adapter(model, scored)
            row = {**variant, **time_one_pass(model, tokenizer, score_records, size, device,
                                              cold=variant.get("cold", False),
                                              autocast=variant.get("autocast", cfg.score_autocast),
                                              cudnn=variant.get("cudnn"), reference=sc["pred"]), "error": None}
            row["mfu"] = mfu(row["real_tokens_per_s"], fscore, matmul["flops"])
            print(f"[bench] lever {row['variant']}: {row['questions_per_s']:.1f} questions/s"
                  + (f" (cold pass {row['cold_seconds']:.2f} s)" if "cold_seconds" in row else ""), flush=True)
        else:
            row = run_lever(model, variant, cfg, examples, optimizer, state, device, pad_id)
            if not row.get("error"):
                row["mfu"] = mfu(row["real_tokens_per_s"], ftrain, matmul["flops"])
            print(f"[bench] lever {row['variant']}: {row.get('real_tokens_per_s', row.get('error'))}", flush=True)
        levers.append(row)
        save(final=i == len(variants) - 1)
    if not variants:
        save(final=True)
    print(format_report(metrics), flush=True)
    if write:
        print(f"[bench] record written to {metrics['record']}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_bench(parse_args(argv))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
