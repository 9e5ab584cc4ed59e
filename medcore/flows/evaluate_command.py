"""The ``python -m medcore evaluate`` command: settings from a profile (or RunConfig's defaults at bf16) with the
flags given on top, one scoring record through :func:`medcore.flows.workflows.score_and_record`, and the plain-text
report it prints (:func:`report_text`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medcore import data, lora, records, schema, subjects
from medcore.config import ConfigError, QuantConfig, RunConfig
from medcore.flows import workflows


def evaluate_defaults() -> RunConfig:
    """What `medcore evaluate` scores with when no profile is given: RunConfig's defaults at bf16."""
    return RunConfig(quant=QuantConfig(precision="bf16", double_quant=True))


def evaluate_model(model_spec: str | None = None, source: str | None = None, split: str | None = None,
                   limit: int | None = None, precision: str | None = None, adapter: str | None = None,
                   batch_size: int | None = None, results_dir: str | None = None, run_id: str | None = None,
                   seed: int | None = None, on_invalid: str | None = None, rotations: bool | None = None,
                   base: RunConfig | None = None) -> Path:
    """The `python -m medcore evaluate` command: score, print accuracy, tables and cost, write a record.

    The settings are `base` (a profile's config; default: RunConfig's defaults at bf16) with each argument that is
    given on top; a precision given means that preset with double quantization. ``limit`` keeps a stratified subset
    of that many questions; ``on_invalid="skip"`` scores the valid records of a file with broken ones (the report
    counts them). The adapter is checked before anything loads."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give a positive number of questions, or leave --limit out to score "
                          "the whole split")
    lora.require_adapter(adapter or None)
    given = {"model.source": model_spec, "data.source": source, "data.eval_split": split, "results_dir": results_dir,
             "quant.precision": precision, "quant.double_quant": True if precision is not None else None,
             "eval.batch_size": batch_size, "data.seed": seed, "data.on_invalid": on_invalid,
             "eval.rotations": rotations}  # rotations None: on CUDA only
    start = base or evaluate_defaults()
    spec, preset = model_spec or start.model.source, precision or start.quant.precision
    name = run_id or f"eval-{spec.split(':')[-1].replace('/', '_')}-{preset}"
    cfg = start.with_overrides({k: v for k, v in given.items() if v is not None}, name=name)
    source, split, seed, on_invalid = cfg.data.source, cfg.data.eval_split, cfg.data.seed, cfg.data.on_invalid
    ds, loaded = data.load_medmcqa_report(source, split, on_invalid=on_invalid)
    schema.require_answers(ds, purpose="scoring")
    skipped = {"skipped_records": sum(loaded.skipped.values()), "skipped_reasons": dict(loaded.skipped)}
    if limit and limit < len(ds):
        ds = subjects.stratified_subset(ds, limit, seed=seed)
    model, tokenizer = workflows.load(cfg, adapter=adapter)
    record = workflows.score_and_record(cfg, model, tokenizer, ds, cfg.name, "fine-tuned" if adapter else "zero-shot",
                                        extra=skipped if loaded.skipped else None)
    print(report_text(records.load_run(record)))
    print(f"run record: {record}")
    return record


def report_text(run: dict[str, Any]) -> str:
    """A plain-text report of one scoring record: accuracy with interval, what was cut or skipped, the subject
    table, the cost."""
    m, env = run["metrics"], run["environment"]
    lines = [f"model {env.get('model', {}).get('source', '?')} ({'real' if m.get('real_weights') else 'RANDOM'} "
             f"weights), precision {m.get('precision')}, {m['n']} questions",
             f"accuracy {m['accuracy']:.3f} (95% Wilson CI {m['ci_low']:.3f}-{m['ci_high']:.3f}), ECE {m.get('ece', float('nan')):.3f}"
             f", exact ties {m.get('ties', 0)}"]
    for name in ("circular", "debiased"):
        if m.get(f"{name}_accuracy") is not None:
            lines.append(f"{name} accuracy {m[f'{name}_accuracy']:.3f} "
                         f"(95% Wilson CI {m[f'{name}_ci_low']:.3f}-{m[f'{name}_ci_high']:.3f})")
    if m.get("predicted_share_A") is not None:
        lines.append("predicted letters " + ", ".join(f"{c} {m[f'predicted_share_{c}']:.1%}" for c in "ABCD"))
    if m.get("truncated"):
        limit = (run.get("config") or {}).get("data", {}).get("max_length", "?")
        lines.append(f"{m['truncated']} of {m['n']} questions cut to fit data.max_length={limit} tokens (the question "
                     "text shortened; the choices kept whole)")
    if env.get("skipped_records"):
        why = ", ".join(f"{reason}: {n}" for reason, n in env.get("skipped_reasons", {}).items())
        lines.append(f"{env['skipped_records']} invalid records skipped ({why})")
    if m.get("by_subject"):
        table = pd.DataFrame(m["by_subject"]).drop(columns="index", errors="ignore")
        lines += ["", table.to_string(index=False, float_format=lambda x: f"{x:.3f}")]
    c = m.get("cost")
    if c:
        cond = c["conditions"]
        lines += ["", f"cost on {cond['device_name']}: batch-1 latency {c['latency_ms_median']:.1f} ms (median, "
                      f"p90 {c['latency_ms_p90']:.1f}), {c['best_qps']:.1f} questions/s at batch {c['best_batch_size']}, "
                      f"peak memory {c['peak_memory_bytes'] / 2**30:.2f} GiB ({c['peak_memory_kind']}), "
                      f"mean prompt {cond['mean_prompt_tokens']:.0f} tokens"]
    return "\n".join(lines)
