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

Ceiling: a bf16 matmul timed in the same run. MFU counts 6N FLOP per trained real token and 2N per scored one
(N = non-embedding parameters). ``--levers`` reruns the medcore training row once per variant, each a set of
RunConfig overrides (:data:`LEVERS`), from the same adapter weights. The record (``results.write_run_record``)
holds the run configuration as ``config.json`` and the bench options, rewritten after each lever.
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from medcore.bench.peers import (
    adapter_state, baseline_batches, baseline_loss, encode_training_examples, free_memory, matmul_rate, mfu,
    objective_check, restore_adapter, score_flops_per_token, time_scoring, time_one_pass,
    time_training, train_flops_per_token, _to,
)

ROOT = Path(__file__).resolve().parents[2]  # the checkout: medcore/bench/<this file>
SCORE_QUESTIONS = 4183  # the MedMCQA validation split
LEVERS = {  # name -> (variant label, RunConfig overrides); each a rerun of the medcore training row
    "repeat": [("repeat", {})],
    "ckpt": [("checkpointing toggled", {"train.gradient_checkpointing": "toggle"})],
    "compile": [("compile toggled", {"train.compile": "toggle"})],
    "lora_input_float32": [("peft's float32 LoRA-input copy kept", {"train.lora_input_float32": True})],
    "optim": [("adamw_torch", {"train.optimizer": "adamw_torch"})],
}
LEVER_ALIASES = {"peft_cast": "lora_input_float32", "lora_cast": "lora_input_float32"}  # old names, one release
BUDGET_LEVER = "budget"  # one variant per --budgets value: train.token_budget and max rows scaled alongside
SCORE_LEVER = "score_batch"  # one variant per --score-batch-sizes value: eval.batch_size


@dataclass
class BenchOptions:
    """What only the benchmark needs; everything the product uses comes from the RunConfig."""
    steps: int = 30  # timed tutorial-baseline steps
    warmup: int = 3  # untimed baseline steps first
    baseline_batch_size: int = 16
    pad_length: int = 256
    n_train: int | None = None  # questions the medcore row trains on (None: all loaded)
    n_questions: int | None = None  # questions scored (None: all on CUDA, 64 on CPU)
    levers: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=lambda: [4096, 16384])
    score_batch_sizes: list[int] = field(default_factory=lambda: [64, 512])
    matmul_size: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    source: str | None = None  # None: shared/medmcqa in the checkout or beside it, else the mirror
    out: str = "results/bench-product"
    run_id: str | None = None
    seed: int = 0
    headline: bool = False  # mark the record as its folder's headline (the one the Performance page leads with)


def parse_args(argv: Sequence[str] | None):
    """(RunConfig, BenchOptions) from the command line; bad values raise ConfigError or exit 2 naming the flag."""
    from medcore.config import add_config_arguments, config_from_args

    d = BenchOptions()
    p = argparse.ArgumentParser(prog="medcore bench", description=__doc__.split("\n\n")[0])
    add_config_arguments(p, profile="paper", what="the run configuration a user's command would get")
    p.add_argument("--model", default="random:gemma-2b", help="model.source (default: the Gemma-2B shape, random)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed tutorial-baseline steps")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed baseline steps first")
    p.add_argument("--baseline-batch-size", type=int, default=d.baseline_batch_size)
    p.add_argument("--pad-length", type=int, default=d.pad_length)
    p.add_argument("--n-train", type=int, default=None, help="questions the medcore row trains on (default all)")
    p.add_argument("--n-questions", type=int, default=None, help="questions scored (default: all on CUDA, 64 on CPU)")
    p.add_argument("--levers", default="", help=f"comma list of {', '.join([*LEVERS, BUDGET_LEVER, SCORE_LEVER])}")
    p.add_argument("--budgets", default=",".join(map(str, d.budgets)), help="token budgets of the budget lever")
    p.add_argument("--score-batch-sizes", default=",".join(map(str, d.score_batch_sizes)))
    p.add_argument("--matmul-size", type=int, default=None)
    p.add_argument("--source", default=None, help="MedMCQA source (default: shared/medmcqa if present, else mirror)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--run-id", default=None, help="default bench-<model>-<device>")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--headline", action="store_true", help="mark the record as its folder's headline")
    argv = list(argv or [])
    a = p.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    levers = [x.strip() for x in a.levers.split(",") if x.strip()]
    for old in sorted(set(levers) & set(LEVER_ALIASES)):
        print(f"[bench] lever {old!r} is now {LEVER_ALIASES[old]!r}; the old name goes in the next release",
              file=sys.stderr)
    levers = [LEVER_ALIASES.get(x, x) for x in levers]
    known = [*LEVERS, BUDGET_LEVER, SCORE_LEVER]
    if sorted(set(levers) - set(known)):
        p.error(f"unknown lever(s) {sorted(set(levers) - set(known))}; choose from {', '.join(known)}")
    for name in ("steps", "baseline_batch_size", "pad_length"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    sizes = {}
    for name in ("budgets", "score_batch_sizes"):
        try:
            sizes[name] = [int(x) for x in getattr(a, name).split(",") if x.strip()]
        except ValueError:
            sizes[name] = []
        if not sizes[name] or min(sizes[name]) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)!r}: give whole numbers of at least 1, comma-separated")
    cfg = config_from_args(a, f"model.source={a.model}")
    opts = BenchOptions(steps=a.steps, warmup=a.warmup, baseline_batch_size=a.baseline_batch_size,
                        pad_length=a.pad_length, n_train=a.n_train, n_questions=a.n_questions, levers=levers,
                        matmul_size=a.matmul_size, source=a.source, out=a.out, run_id=a.run_id, seed=a.seed,
                        headline=a.headline, **sizes)
    return cfg, opts


def default_source() -> str:
    """shared/medmcqa inside the checkout (it travels with a copy of the working tree), then ../shared/medmcqa, else
    the mirror."""
    for folder in (ROOT / "shared" / "medmcqa", ROOT.parent / "shared" / "medmcqa"):
        if (folder / "dev.json").is_file():
            return f"local:{folder}"
    return "mirror"


def load_records(source: str | None, seed: int) -> list[dict]:
    from medcore.data import load_medmcqa

    ds = load_medmcqa(source or default_source(), "validation", on_invalid="skip")
    records = [r for r in ds.to_list() if r["answer"] is not None]
    random.Random(seed).shuffle(records)
    return records


def lever_variants(levers: Sequence[str], cfg, opts: BenchOptions) -> list[tuple[str, str, dict]]:
    """(lever, label, RunConfig overrides) per variant; "toggle" flips the configuration's boolean."""
    out = []
    for lever in levers:
        if lever == BUDGET_LEVER:
            out += [(lever, f"token budget {b}", {"train.token_budget": b, "train.max_batch_size": max(1, b // 64)})
                    for b in opts.budgets]
        elif lever == SCORE_LEVER:
            out += [(lever, f"scoring batch {b}", {"eval.batch_size": b}) for b in opts.score_batch_sizes]
        else:
            for label, overrides in LEVERS[lever]:
                resolved = {k: (not _get(cfg, k)) if v == "toggle" else v for k, v in overrides.items()}
                out.append((lever, label, resolved))
    return out


def _get(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _variant(cfg, overrides: dict):
    from medcore.config import set_field

    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        set_field(out, key, value)
    if out.train.token_budget < out.data.max_length:  # a smaller budget lever: the longest example must fit
        out.data.max_length = out.train.token_budget
    return out.validate()


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
    warm = [_to(b, device) for b in baseline_batches(examples[:n_warm], opts.baseline_batch_size, opts.pad_length, pad)]
    timed = [_to(b, device) for b in baseline_batches(examples[n_warm:], opts.baseline_batch_size, opts.pad_length, pad)]
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


# ---- targets and report -------------------------------------------------------------------------------------------

def targets(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU-path targets, from the measured rows; `conditions_match`: CUDA, Gemma-2B shape, NF4 + DQ, LoRA."""
    c = m["conditions"]
    tr = {r["recipe"]: r for r in m["training"]}
    med, base = tr["medcore"], tr["baseline"]
    one, harness = m["scoring"]
    match = c["device_type"] == "cuda" and c["model"] == "random:gemma-2b" and c["precision"] == "nf4+dq"
    first = one["cold_seconds"] * SCORE_QUESTIONS / one["questions"]
    rows = [("training steady real tokens/s", ">= 25,000", med["real_tokens_per_s"], 25_000, ">", ""),
            ("training MFU (6N per real token)", ">= 38%", med["mfu"], 0.38, ">", "%"),
            ("training real tokens/s, medcore / tutorial", ">= 10x",
             med["real_tokens_per_s"] / base["real_tokens_per_s"], 10, ">", "x"),
            (f"scoring {SCORE_QUESTIONS:,} questions, first pass" +
             ("" if one["questions"] == SCORE_QUESTIONS else f" (projected from {one['questions']})"),
             "<= 3 s", first, 3, "<", "s"),
            ("scoring questions/s, medcore / harness-style", ">= 4x",
             one["questions_per_s"] / harness["questions_per_s"], 4, ">", "x")]
    for row in [med, *m.get("levers", [])]:
        if row.get("error") or "token_budget" not in row or not row.get("gradient_checkpointing"):
            continue
        limit = {4096: 5e9, 16384: 10e9}.get(row["token_budget"])
        if limit and not any(r[0].startswith(f"peak memory at {row['token_budget']:,}") for r in rows):
            rows.append((f"peak memory at {row['token_budget']:,} tokens/batch, checkpointing on",
                         f"<= {limit / 1e9:.0f} GB", row["peak_memory_bytes"] / 1e9, limit / 1e9, "<", "GB"))
    return [{"target": name, "goal": goal, "measured": value, "unit": unit, "conditions_match": match,
             "met": bool(value >= bound if op == ">" else value <= bound)} for name, goal, value, bound, op, unit in rows]


def _f(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return {"%": f"{100 * v:.1f}%", "x": f"{v:.2f}x", "s": f"{v:.2f} s", "GB": f"{v:.2f} GB"}.get(
        unit, f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")


def format_report(m: dict[str, Any]) -> str:
    c = m["conditions"]
    lines = [f"medcore bench: {c['model']} ({'real' if c['real_weights'] else 'RANDOM'} weights), {c['precision']}, "
             f"LoRA r={c['lora_r']} {c['lora_targets']}, {c['device_name']}; bf16 matmul "
             f"{m['matmul_tflops']:.0f} TFLOP/s; model load {c['load_seconds']:.1f} s", "", "training:"]
    for r in m["training"]:
        lines.append(f"  {r['recipe']:9s} {_f(r['real_tokens_per_s'])} real tok/s ({r['steps']} steps), "
                     f"MFU {_f(r['mfu'], '%')}, peak {_f(r['peak_memory_bytes'] / 1e9, 'GB')}  [{r['code_path']}]")
    med = m["training"][0]
    lines.append(f"  medcore over every step {_f(med['all_steps_real_tokens_per_s'])} real tok/s; train() wall "
                 f"{med['train_wall_seconds']:.1f} s; row from model load {m['medcore_wall_seconds']:.1f} s")
    lines.append("scoring:")
    for r in m["scoring"]:
        lines.append(f"  {r['scorer']}: first pass {r['cold_seconds']:.2f} s, second {r['seconds']:.2f} s, "
                     f"{_f(r['questions_per_s'])} q/s, peak {_f(r['peak_memory_bytes'] / 1e9, 'GB')}")
    for r in m.get("levers", []):
        value = f"failed: {r['error'][:100]}" if r.get("error") else (
            f"{_f(r['real_tokens_per_s'])} real tok/s, peak {_f(r['peak_memory_bytes'] / 1e9, 'GB')}"
            if "real_tokens_per_s" in r and r["lever"] != SCORE_LEVER else
            f"first pass {r.get('cold_seconds', float('nan')):.2f} s, {_f(r['questions_per_s'])} q/s")
        lines.append(f"  lever {r['variant']}: {value}")
    lines += ["", "targets (conditions: CUDA, random:gemma-2b, nf4+dq):"]
    lines += [f"  {t['target']}: {_f(t['measured'], t['unit'])} (goal {t['goal']}) "
              f"{'met' if t['met'] else 'NOT met'}{'' if t['conditions_match'] else ' [other conditions]'}"
              for t in m["targets"]]
    return "\n".join(lines)


# ---- the run ----------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return {"torch": torch.__version__, **out}


def run_bench(cfg, opts: BenchOptions, write: bool = True) -> dict[str, Any]:
    """Measure every row, print the report, write the record (``write``); returns the metrics."""
    import datasets

    from medcore import lora, models
    from medcore.flows import workflows
    from medcore.results import portable_paths, write_run_record

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
    train_ds = datasets.Dataset.from_list(records[:opts.n_train] if opts.n_train else records)
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
    conditions = {"device_type": device.type, "device_name": device_name, **_versions(), "model": cfg.model.source,
                  "real_weights": bool(info["real_weights"]), "precision": workflows.precision_label(cfg.quant),
                  "lora_method": cfg.lora.method, "lora_r": cfg.lora.r, "lora_targets": cfg.lora.targets,
                  "non_embedding_params": n_params, "load_seconds": load_s, "n_train_questions": len(train_ds),
                  "n_questions_scored": len(scored), "score_batch_size": sc["batch_size"],
                  "score_autocast": sc["autocast"], "matmul_size": matmul["size"], "source": opts.source or
                  default_source(), "mean_prompt_tokens": sc["mean_prompt_tokens"]}
    metrics: dict[str, Any] = {
        "code_paths": {"training": "medcore.train.train", "scoring": "medcore.evaluate.score_choices"},
        "device": device_name, "model": cfg.model.source, "real_weights": conditions["real_weights"],
        "matmul_tflops": matmul["flops"] / 1e12, "medcore_wall_seconds": load_s + med["train_wall_seconds"],
        "training": [med, base], "scoring": sc["rows"],
        "scoring_check": {k: v for k, v in sc.items() if k not in ("rows", "pred")},
        "levers": [], "conditions": conditions}
    run_id = opts.run_id or f"bench-{_slug(cfg.model.source.partition(':')[2])}-{_slug(device_name)}"

    def save(final: bool) -> None:
        metrics["targets"], metrics["complete"] = targets(metrics), final
        if write:
            metrics["record"] = str(write_run_record(
                opts.out, run_id, config=portable_paths(cfg.to_dict()), metrics=portable_paths(metrics),
                overwrite=True, headline=opts.headline, extra=portable_paths({
                    "real_weights": conditions["real_weights"], "kind": "bench", "model_source": cfg.model.source,
                    "options": asdict(opts)})))

    variants = lever_variants(opts.levers, cfg, opts)
    save(final=not variants)
    for i, (lever, label, overrides) in enumerate(variants):
        row: dict[str, Any] = {"lever": lever, "variant": label, "overrides": overrides, "error": None}
        try:
            vcfg = _variant(cfg, overrides)
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
    print(format_report(metrics), flush=True)
    if write:
        print(f"[bench] record written to {metrics['record']}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    cfg, opts = parse_args(argv)
    run_bench(cfg, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
