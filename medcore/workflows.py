"""The study's steps as functions: what the CLI, the notebooks and the GPU study call.

Each step loads what it needs from one `RunConfig`, measures, and writes one run record
(`results.write_run_record`) whose metrics are flat numbers plus small tables, so the analysis
notebook can put every run side by side. A record always says whether its weights were real.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medcore import data, evaluate, lora, models, quantize, results, train
from medcore.config import QuantConfig, RunConfig

PRECISION_PRESETS = {  # label -> QuantConfig; the footprint/cost comparison of notebook 02
    "bf16": QuantConfig("bf16", False), "int8": QuantConfig("int8", False),
    "nf4": QuantConfig("nf4", False), "nf4+dq": QuantConfig("nf4", True),
    "fp4": QuantConfig("fp4", False), "fp4+dq": QuantConfig("fp4", True),
}


def precision_label(q: QuantConfig) -> str:
    return q.precision + ("+dq" if q.double_quant and q.precision in ("nf4", "fp4") else "")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---- data --------------------------------------------------------------------------------------------------

def study_data(cfg: RunConfig) -> tuple[Any, Any]:
    """(train, eval) datasets for a config.

    With ``data.train_source`` the training questions come from that source's ``train_split`` (a stratified
    ``train_size`` subset if set). Without it, the ``eval_split`` of ``data.source`` is split by subject:
    ``train_size`` questions to train on, the disjoint rest to evaluate (the offline protocol).
    ``eval_limit`` then keeps a stratified subset of the evaluation questions.
    """
    d = cfg.data
    eval_ds = data.load_medmcqa(d.source, d.eval_split, on_invalid=d.on_invalid)
    if d.train_source:
        train_ds = data.load_medmcqa(d.train_source, d.train_split, on_invalid=d.on_invalid)
        if d.train_size and d.train_size < len(train_ds):
            train_ds = data.stratified_subset(train_ds, d.train_size, seed=d.seed)
    else:
        train_ds, eval_ds = data.stratified_split(eval_ds, train_size=d.train_size or len(eval_ds) // 2, seed=d.seed)
    if d.eval_limit and d.eval_limit < len(eval_ds):
        eval_ds = data.stratified_subset(eval_ds, d.eval_limit, seed=d.seed)
    data.require_answers(eval_ds, purpose="evaluation")
    return train_ds, eval_ds


# ---- models ------------------------------------------------------------------------------------------------

def load(cfg: RunConfig, quant: QuantConfig | None = None, adapter: str | Path | None = None):
    """(model, tokenizer) for the config's model at `quant` (default: the config's), optionally with an adapter."""
    model = quantize.load_quantized(cfg.model.source, quant or cfg.quant, device=device())
    if adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, str(adapter))
        quantize.disable_cpu_repack(model)
    return model, models.load_tokenizer(cfg.model.source)


def _weights_note(model) -> dict[str, Any]:
    info = models.describe_model(model)
    return {"real_weights": bool(info.get("real_weights")), "model": info}


# ---- measuring ---------------------------------------------------------------------------------------------

def _tables(summary: dict[str, Any]) -> dict[str, Any]:
    """accuracy_summary's DataFrames as JSON-able lists of rows; scalars unchanged."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, pd.DataFrame):
            out[key] = value.reset_index().to_dict(orient="records")
        elif isinstance(value, tuple):
            out[key] = [list(map(float, v)) for v in value]
        else:
            out[key] = value
    return out


def score_and_record(cfg: RunConfig, model, tokenizer, eval_ds, run_id: str, role: str,
                     cost: bool = True, extra: dict | None = None) -> Path:
    """Score `eval_ds`, measure cost, and write the run record `<results_dir>/<run_id>`."""
    start = time.perf_counter()
    preds = evaluate.score_choices(model, tokenizer, eval_ds, batch_size=cfg.eval.batch_size,
                                   max_length=cfg.data.max_length)
    metrics: dict[str, Any] = {"role": role, "precision": precision_label(cfg.quant), "score_seconds":
                               time.perf_counter() - start, **_tables(evaluate.accuracy_summary(preds))}
    if cost:
        sample = eval_ds.select(range(min(len(eval_ds), 8 * cfg.eval.batch_size)))
        metrics["cost"] = evaluate.measure_cost(model, tokenizer, sample, batch_sizes=(1, cfg.eval.batch_size),
                                                n_latency=cfg.eval.latency_batches, max_length=cfg.data.max_length)
    note = {**_weights_note(model), **(extra or {})}
    metrics["real_weights"] = note["real_weights"]
    return results.write_run_record(cfg.results_dir, run_id, cfg.to_dict(), metrics, predictions=preds,
                                    extra=note, overwrite=True)


def footprints(cfg: RunConfig, presets: list[str] | None = None, error_vs_bf16: bool = True) -> Path:
    """Measured footprint (memory, constants, disk) and per-layer quantization error for precision presets."""
    presets = presets or ["bf16", "int8", "nf4", "nf4+dq", "fp4+dq"]
    reports, errors = {}, []
    base = quantize.load_quantized(cfg.model.source, PRECISION_PRESETS["bf16"], device=device())
    note = _weights_note(base)
    for label in presets:
        model = base if label == "bf16" else quantize.load_quantized(cfg.model.source, PRECISION_PRESETS[label],
                                                                     device=device())
        reports[label] = quantize.footprint(model)
        if error_vs_bf16 and label != "bf16" and label != "int8":
            err = quantize.quantization_error(base, model)
            errors.append(err.assign(precision=label))
        if model is not base:
            del model
    table = quantize.footprint_table(reports)
    metrics = {"role": "footprint", "real_weights": note["real_weights"],
               "footprint": table.reset_index().to_dict(orient="records"),
               "reports": {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, pd.DataFrame)}
                           for k, v in reports.items()}}
    pred = pd.concat(errors, ignore_index=True) if errors else None
    return results.write_run_record(cfg.results_dir, f"{cfg.name}-footprint", cfg.to_dict(), metrics,
                                    predictions=pred, extra=note, overwrite=True)


def finetune(cfg: RunConfig, output_dir: str | Path | None = None, resume: bool = False,
             datasets_: tuple | None = None) -> tuple[Path, Any]:
    """QLoRA for a config: load quantized, attach the adapter, train, record; returns (record, TrainResult)."""
    train_ds, eval_ds = datasets_ or study_data(cfg)
    output_dir = Path(output_dir or Path(cfg.results_dir).parent / "checkpoints" / cfg.name)
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = load(cfg)
    model = lora.attach_adapter(model, cfg.lora, quantized=cfg.quant.precision != "bf16")
    params = lora.trainable_parameters(model)
    result = train.train(cfg, model, tokenizer, train_ds, eval_ds, output_dir, resume=resume)
    metrics = {"role": "train", "precision": precision_label(cfg.quant), "n_train": len(train_ds),
               "n_eval": len(eval_ds), "adapter_dir": result.adapter_dir, "parameters": params, **result.metrics}
    note = _weights_note(model)
    metrics["real_weights"] = note["real_weights"]
    record = results.write_run_record(cfg.results_dir, f"{cfg.name}-train", cfg.to_dict(), metrics,
                                      loss_history=result.loss_history, extra=note, overwrite=True)
    return record, result


def before_after(cfg: RunConfig, adapter_dir: str | Path, datasets_: tuple | None = None) -> tuple[Path, Path]:
    """Zero-shot and fine-tuned records on the same questions at the config's precision."""
    _, eval_ds = datasets_ or study_data(cfg)
    model, tokenizer = load(cfg)
    before = score_and_record(cfg, model, tokenizer, eval_ds, f"{cfg.name}-zero-shot", "zero-shot")
    del model
    model, tokenizer = load(cfg, adapter=adapter_dir)
    after = score_and_record(cfg, model, tokenizer, eval_ds, f"{cfg.name}-fine-tuned", "fine-tuned",
                             extra={"adapter_dir": str(adapter_dir)})
    return before, after


def evaluate_model(model_spec: str, source: str = "mirror", split: str = "validation", limit: int | None = None,
                   precision: str = "bf16", adapter: str | None = None, batch_size: int = 16,
                   results_dir: str = "results", run_id: str | None = None, seed: int = 0) -> Path:
    """The `python -m medcore evaluate` command: score, print accuracy, tables and cost, write a record."""
    cfg = RunConfig(name=run_id or f"eval-{model_spec.split(':')[-1].replace('/', '_')}-{precision}",
                    results_dir=results_dir)
    cfg.model.source, cfg.quant.precision, cfg.quant.double_quant = model_spec, precision, True
    cfg.data.source, cfg.data.eval_split, cfg.eval.batch_size, cfg.data.seed = source, split, batch_size, seed
    cfg.validate()
    ds = data.require_answers(data.load_medmcqa(source, split), purpose="scoring")
    if limit and limit < len(ds):
        ds = data.stratified_subset(ds, limit, seed=seed)
    model, tokenizer = load(cfg, adapter=adapter)
    record = score_and_record(cfg, model, tokenizer, ds, cfg.name, "fine-tuned" if adapter else "zero-shot")
    print(report_text(results.load_run(record)))
    print(f"run record: {record}")
    return record


def report_text(run: dict[str, Any]) -> str:
    """A plain-text report of one scoring record: accuracy with interval, the subject table, the cost."""
    m, env = run["metrics"], run["environment"]
    lines = [f"model {env.get('model', {}).get('source', '?')} ({'real' if m.get('real_weights') else 'RANDOM'} "
             f"weights), precision {m.get('precision')}, {m['n']} questions",
             f"accuracy {m['accuracy']:.3f} (95% Wilson CI {m['ci_low']:.3f}-{m['ci_high']:.3f}), ECE {m.get('ece', float('nan')):.3f}"]
    if m.get("by_subject"):
        table = pd.DataFrame(m["by_subject"])
        lines += ["", table.to_string(index=False, float_format=lambda x: f"{x:.3f}")]
    c = m.get("cost")
    if c:
        cond = c["conditions"]
        lines += ["", f"cost on {cond['device_name']}: batch-1 latency {c['latency_ms_median']:.1f} ms (median, "
                      f"p90 {c['latency_ms_p90']:.1f}), {c['best_qps']:.1f} questions/s at batch {c['best_batch_size']}, "
                      f"peak memory {c['peak_memory_bytes'] / 2**30:.2f} GiB ({c['peak_memory_kind']}), "
                      f"mean prompt {cond['mean_prompt_tokens']:.0f} tokens"]
    return "\n".join(lines)
