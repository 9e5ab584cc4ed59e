"""The study's steps as functions: what the CLI, the notebooks and the GPU study driver call.

Each step loads what it needs from one `RunConfig`, measures, and writes one run record
(`results.write_run_record`) whose metrics are flat numbers plus small tables, so `medcore.report.records` can put
every run side by side. A record always says whether its weights were real.

Steps and the records they write (``<cfg.results_dir>/<run id>``):

- :func:`study_data` - the (train, eval) questions of a config; :func:`data_record` -> ``<name>-data``;
- :func:`footprints` - size, per-layer error and a small latency sample per precision -> ``<name>-footprint``;
- :func:`finetune` - QLoRA (or LoRA on bf16) -> ``<name>-train`` (+ the adapter);
- :func:`before_after` - zero-shot and fine-tuned scoring on the same questions -> ``<name>-zero-shot``,
  ``<name>-bf16-zero-shot`` (optional), ``<name>-fine-tuned``;
- :func:`evaluate_model` - the ``python -m medcore evaluate`` command.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medcore import data, evaluate, lora, models, prompts, quantize, results, schema, subjects, train
from medcore.accuracy import accuracy_summary
from medcore.config import ConfigError, QuantConfig, RunConfig
from medcore.scoring_cost import measure_cost

PRECISION_PRESETS = {  # label -> QuantConfig; the footprint/cost comparison of notebook 02
    "bf16": QuantConfig("bf16", False), "int8": QuantConfig("int8", False),
    "nf4": QuantConfig("nf4", False), "nf4+dq": QuantConfig("nf4", True),
    "fp4": QuantConfig("fp4", False), "fp4+dq": QuantConfig("fp4", True),
}


def precision_label(q: QuantConfig) -> str:
    return q.precision + ("+dq" if q.double_quant and q.precision in ("nf4", "fp4") else "")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def eval_batch_size(cfg: RunConfig, dev: torch.device) -> int:
    """``eval.batch_size``, or where unset the device's default: large batches keep a GPU busy, small ones a CPU's
    memory low."""
    return cfg.eval.batch_size or (256 if dev.type == "cuda" else 16)


def eval_autocast(cfg: RunConfig, dev: torch.device) -> bool:
    """Whether scoring runs under bf16 autocast (``eval.autocast``: auto = on CUDA only)."""
    return cfg.eval.autocast == "bf16" or (cfg.eval.autocast == "auto" and dev.type == "cuda")


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back (between models loaded in one process)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- data --------------------------------------------------------------------------------------------------

@dataclass
class StudyData:
    """The questions of a config. Unpacks as ``train, eval = study_data(cfg)``; ``dropped`` counts questions
    whose four choices alone exceed ``data.max_length`` (the only ones that cannot be kept: longer questions are
    truncated, never their choices), ``sources`` says where each split came from."""

    train: Any
    eval: Any
    dropped: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    sources: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.train, self.eval))


def _fits(tokenizer, max_length: int):
    def ok(record: dict) -> bool:
        try:
            prompts.encode_prompt(tokenizer, record["question"], record["options"], max_length)
            return True
        except ValueError:  # the choices alone are longer than max_length
            return False
    return ok


def study_data(cfg: RunConfig, tokenizer=None) -> StudyData:
    """(train, eval) datasets for a config.

    With ``data.train_source`` the training questions come from that source's ``train_split`` (a stratified
    ``train_size`` subset if set). Without it, the ``eval_split`` of ``data.source`` is split by subject:
    ``train_size`` questions to train on, the disjoint rest to evaluate (the offline protocol).
    ``eval_limit`` then keeps a stratified subset of the evaluation questions. With a ``tokenizer``, questions
    that cannot fit ``data.max_length`` even with the question cut are left out first and counted.
    """
    d = cfg.data
    dropped = {"train": 0, "eval": 0}

    def fit(ds, split):
        if tokenizer is None:
            return ds
        kept = ds.filter(_fits(tokenizer, d.max_length), desc=f"{split}: fit max_length")
        dropped[split] = len(ds) - len(kept)
        return kept

    eval_ds = fit(data.load_medmcqa(d.source, d.eval_split, on_invalid=d.on_invalid), "eval")
    if d.train_source:
        train_ds = fit(data.load_medmcqa(d.train_source, d.train_split, on_invalid=d.on_invalid), "train")
        if d.train_size and d.train_size < len(train_ds):
            train_ds = subjects.stratified_subset(train_ds, d.train_size, seed=d.seed)
        sources = {"train": f"{d.train_source} [{d.train_split}]", "eval": f"{d.source} [{d.eval_split}]"}
    else:
        train_ds, eval_ds = subjects.stratified_split(eval_ds, train_size=d.train_size or len(eval_ds) // 2, seed=d.seed)
        sources = {"train": f"{d.source} [{d.eval_split}], subject-stratified part",
                   "eval": f"{d.source} [{d.eval_split}], the disjoint rest"}
    if d.eval_limit and d.eval_limit < len(eval_ds):
        eval_ds = subjects.stratified_subset(eval_ds, d.eval_limit, seed=d.seed)
        sources["eval"] += f", stratified subset of {d.eval_limit}"
    schema.require_answers(eval_ds, purpose="evaluation")
    return StudyData(train_ds, eval_ds, dropped, sources)


def data_record(cfg: RunConfig, split: StudyData, tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Record ``<name>-data``: the tables notebook 01 shows and, as predictions, which question went where."""
    ids = pd.concat([pd.DataFrame({"id": split.train["id"], "split": "train"}),
                     pd.DataFrame({"id": split.eval["id"], "split": "eval"})], ignore_index=True)
    metrics = {"role": "data", "real_weights": models.parse_model_source(cfg.model.source).real_weights,
               "dropped": split.dropped, "sources": split.sources,
               **{k: v.to_dict(orient="records") for k, v in (tables or {}).items()}}
    return results.write_run_record(cfg.results_dir, f"{cfg.name}-data", cfg.to_dict(), metrics, predictions=ids,
                                    extra={"real_weights": metrics["real_weights"]}, overwrite=True)


# ---- models ------------------------------------------------------------------------------------------------

def load(cfg: RunConfig, quant: QuantConfig | None = None, adapter: str | Path | None = None):
    """(model, tokenizer) for the config's model at `quant` (default: the config's), optionally with an adapter."""
    lora.require_adapter(adapter or None)
    model = quantize.load_quantized(cfg.model.source, quant or cfg.quant, device=device())
    if adapter:
        model = _with_adapter(model, adapter)
    return model, models.load_tokenizer(cfg.model.source)


def _with_adapter(model, adapter: str | Path):
    import peft

    model = peft.PeftModel.from_pretrained(model, str(adapter))
    quantize.disable_cpu_repack(model)
    return model


def model_note(model) -> dict[str, Any]:
    """What a record says about the model it measured: ``real_weights`` and ``describe_model``'s figures."""
    info = models.describe_model(model)
    return {"real_weights": bool(info.get("real_weights")), "model": info}


# ---- measuring ---------------------------------------------------------------------------------------------

def summary_tables(summary: dict[str, Any]) -> dict[str, Any]:
    """accuracy_summary's DataFrames as JSON-able lists of rows; scalars unchanged."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, pd.DataFrame):
            out[key] = value.reset_index(drop=value.index.name is None).to_dict(orient="records")
        elif isinstance(value, tuple):
            out[key] = [list(map(float, v)) for v in value]
        else:
            out[key] = value
    return out


def score_and_record(cfg: RunConfig, model, tokenizer, eval_ds, run_id: str, role: str,
                     cost: bool = True, extra: dict | None = None, cost_questions: int | None = None) -> Path:
    """Score `eval_ds`, measure cost and size, and write the run record `<results_dir>/<run_id>`.

    Metrics: role, precision, score_seconds, accuracy_summary's figures (tables as lists of rows; with
    ``eval.rotations``, on by default on CUDA, also circular and debiased accuracy, at four times the scoring time),
    footprint_bytes (weights + quantization constants + buffers in memory) and, with ``cost``, ``cost``
    (``scoring_cost.measure_cost`` on the first ``cost_questions`` questions, default ``8 x eval.batch_size``).
    Predictions: one row per question.
    """
    start = time.perf_counter()
    size, autocast = eval_batch_size(cfg, device()), eval_autocast(cfg, device())
    preds = evaluate.score_choices(model, tokenizer, eval_ds, batch_size=size, autocast=autocast,
                                   max_length=cfg.data.max_length, progress=False,
                                   rotations=evaluate.rotations_on(cfg.eval.rotations, device()))
    metrics: dict[str, Any] = {"role": role, "precision": precision_label(cfg.quant), "score_seconds":
                               time.perf_counter() - start, **summary_tables(accuracy_summary(preds)),
                               "footprint_bytes": quantize.footprint(model, disk=False)["total_bytes"]}
    if cost:
        sample = eval_ds.select(range(min(len(eval_ds), cost_questions or 8 * size)))
        metrics["cost"] = measure_cost(model, tokenizer, sample, batch_sizes=(1, size),
                                       n_latency=cfg.eval.latency_batches, max_length=cfg.data.max_length)
    note = {**model_note(model), **(extra or {})}
    metrics["real_weights"] = note["real_weights"]
    return results.write_run_record(cfg.results_dir, run_id, cfg.to_dict(), metrics, predictions=preds,
                                    extra=note, overwrite=True)


def footprints(cfg: RunConfig, presets: list[str] | None = None, error_vs_bf16: bool = True,
               latency_sample=None, timed: list[str] | None = None, disk: bool = True) -> Path:
    """Record ``<name>-footprint``: per precision preset the measured footprint (memory by module kind,
    quantization constants, bytes on disk), the per-layer quantization error against bf16 (as predictions:
    layer, kind, precision, error), the seconds it took, and, given ``latency_sample`` (a few questions), the
    batch-1 latency, throughput and peak memory of scoring them for the ``timed`` presets (default: all). A preset
    this machine cannot load gets its error in ``status``."""
    presets = presets or ["bf16", "int8", "nf4", "nf4+dq", "fp4+dq"]
    tokenizer = models.load_tokenizer(cfg.model.source) if latency_sample is not None else None
    base = quantize.load_quantized(cfg.model.source, PRECISION_PRESETS["bf16"], device=device())
    note = model_note(base)
    rows, errors = [], []
    for label in presets:
        row: dict[str, Any] = {"precision": label, "status": "ok"}
        start = time.perf_counter()
        try:
            model = base if label == "bf16" else quantize.load_quantized(cfg.model.source, PRECISION_PRESETS[label],
                                                                         device=device())
            fp = quantize.footprint(model, disk=disk)
            row.update({f"{k}_bytes": v for k, v in fp["by_kind"].items()})
            row.update({k: fp.get(k) for k in ("weight_bytes", "quant_constant_bytes", "buffer_bytes", "total_bytes",
                                               "disk_bytes")})
            if latency_sample is not None and (timed is None or label in timed):
                c = measure_cost(model, tokenizer, latency_sample, batch_sizes=(len(latency_sample),),
                                 n_latency=len(latency_sample), warmup=1, max_length=cfg.data.max_length)
                row.update(latency_ms=c["latency_ms_median"], latency_ms_p90=c["latency_ms_p90"], qps=c["best_qps"],
                           peak_memory_bytes=c["peak_memory_bytes"], peak_memory_kind=c["peak_memory_kind"],
                           device=c["conditions"]["device"])
        except Exception as err:  # e.g. a backend this machine lacks: say so, measure the others
            row["status"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
            rows.append(row)
            continue
        if error_vs_bf16 and label != "bf16":
            try:
                errors.append(quantize.quantization_error(base, model).assign(precision=label))
            except Exception as err:  # e.g. int8 on a CPU backend that keeps no row scales
                row["status"] = f"ok; layer error not measurable: {type(err).__name__}"
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        if model is not base:
            del model
            free_memory()
    del base
    free_memory()
    metrics = {"role": "footprint", "real_weights": note["real_weights"], "footprint": rows}
    pred = (pd.concat(errors, ignore_index=True).rename(columns={"rel_error": "error"})
            .assign(shape=lambda df: df["shape"].astype(str))) if errors else None
    return results.write_run_record(cfg.results_dir, f"{cfg.name}-footprint", cfg.to_dict(), metrics,
                                    predictions=pred, extra=note, overwrite=True)


# ---- training folders --------------------------------------------------------------------------------------

RUN_MARKER = "medcore_run.json"  # written first into every training folder: medcore's own, and its settings
# with checkpoint-N, everything medcore and its Trainer write there (runs/: the TensorBoard events)
OWN_ENTRIES = ("adapter", "runs", "train_result.json", RUN_MARKER)
RESUME_MAY_CHANGE = ("name", "results_dir", "eval.")  # where the record goes and how scoring runs: not training


def _own(entry: Path) -> bool:
    return entry.name in OWN_ENTRIES or (entry.name.startswith("checkpoint-") and entry.is_dir())


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"lora.r: 4 -> 8"`` for every setting that differs, except :data:`RESUME_MAY_CHANGE`; a setting the old
    config lacks (added to medcore since) counts as changed only if it is not at its default."""
    def flat(d, prefix=""):
        return {k: v for key, value in d.items()
                for k, v in (flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else
                             [(f"{prefix}{key}", value)])}
    old, new, default = (flat(json.loads(json.dumps(d, default=str))) for d in (old, new, RunConfig().to_dict()))
    return [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if not key.startswith(RESUME_MAY_CHANGE) and old.get(key, default.get(key)) != new.get(key)]


def prepare_output_dir(cfg: RunConfig, output_dir: str | Path, resume: bool, write: bool = True) -> Path:
    """Make `output_dir` ready to train `cfg` into, deleting only what medcore wrote there.

    A fresh run empties a folder of an earlier medcore run (one with :data:`RUN_MARKER`) of the entries medcore
    writes, and refuses a non-empty folder that is not one. ``resume`` refuses settings that differ from the run's
    (each named, old -> new; :data:`RESUME_MAY_CHANGE` excepted), so the record never claims a value the run did
    not use. Then the marker is written with this config. ``write=False`` only checks (other processes of a launch).
    """
    output_dir = Path(output_dir)
    marker = output_dir / RUN_MARKER
    entries = sorted(output_dir.iterdir()) if output_dir.is_dir() else []
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output folder {output_dir} is a file; pick a folder for --output-dir")
    if resume and marker.is_file():
        try:
            recorded = json.loads(marker.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--resume: {marker} is unreadable, so the run's settings cannot be checked; "
                              "start a new run in another --output-dir") from None
        changed = changed_settings(recorded, cfg.to_dict())
        if changed:
            raise ConfigError(f"--resume: these settings differ from the run in {output_dir}: {'; '.join(changed)}. "
                              "Resume with the run's settings, or start a new run in another --output-dir")
        return output_dir
    if entries and not marker.is_file():
        shown = ", ".join(e.name for e in entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ConfigError(f"output folder {output_dir} is not empty ({shown}) and is not a medcore run (no "
                          f"{RUN_MARKER}); medcore deletes only what it wrote: pick a new or empty --output-dir")
    if write:
        for entry in entries:
            if _own(entry):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f".{RUN_MARKER}.tmp"
        tmp.write_text(json.dumps({"written_by": "medcore", "config": cfg.to_dict()}, indent=2, default=str))
        os.replace(tmp, marker)
    return output_dir


def interrupted_training(output_dir: str | Path) -> str:
    last = train.last_checkpoint(output_dir)
    if last is None:
        return f"training stopped by Ctrl-C before its first checkpoint in {output_dir}; nothing to resume from"
    return (f"training stopped by Ctrl-C; the last complete checkpoint, {last}, is kept: the same command with "
            "--resume (resume=True) continues from it")


def finetune(cfg: RunConfig, output_dir: str | Path | None = None, resume: bool = False,
             datasets_: tuple | None = None, eval_questions: int | None = None) -> tuple[Path, Any]:
    """QLoRA for a config: load quantized, attach the adapter, train, record; returns (record, TrainResult).

    Checkpoints and ``adapter/`` go to ``output_dir`` (default ``<results_dir>/../checkpoints/<name>``), prepared
    by :func:`prepare_output_dir`: with ``resume`` training continues from its last checkpoint if the settings are
    the run's. ``eval_questions`` keeps a stratified subset of the evaluation questions for the evaluation loss
    (its trend; nothing is selected by it). Ctrl-C keeps the checkpoints saved so far.
    """
    output_dir = Path(output_dir or Path(cfg.results_dir).parent / "checkpoints" / cfg.name)
    prepare_output_dir(cfg, output_dir, resume)
    train_ds, eval_ds = datasets_ or study_data(cfg)
    if eval_questions and eval_questions < len(eval_ds):
        eval_ds = subjects.stratified_subset(eval_ds, eval_questions, seed=cfg.data.seed)
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = load(cfg)
    model = lora.attach_adapter(model, cfg.lora, quantized=cfg.quant.precision != "bf16")
    params = lora.trainable_parameters(model)
    try:
        result = train.train(cfg, model, tokenizer, train_ds, eval_ds, output_dir, resume=resume)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_training(output_dir)) from None
    metrics = {"role": "train", "precision": precision_label(cfg.quant), "n_train": len(train_ds),
               "n_eval": len(eval_ds), "adapter_dir": result.adapter_dir, "parameters": params, **result.metrics}
    note = model_note(model)
    metrics["real_weights"] = note["real_weights"]
    record = results.write_run_record(cfg.results_dir, f"{cfg.name}-train", cfg.to_dict(), metrics,
                                      loss_history=result.loss_history, extra=note, overwrite=True)
    del model
    free_memory()
    return record, result


def before_after(cfg: RunConfig, adapter_dir: str | Path, datasets_: tuple | None = None,
                 with_bf16: bool = False, cost_questions: int | None = None) -> dict[str, Path]:
    """Score the same questions zero-shot and fine-tuned; returns {role: record}.

    ``zero-shot`` (``<name>-zero-shot``) is the base at the config's precision, ``fine-tuned``
    (``<name>-fine-tuned``) the same base with the adapter; ``with_bf16`` adds the base in bf16
    (``<name>-bf16-zero-shot``, for what quantization alone costs). ``cost_questions`` as for
    :func:`score_and_record`. A missing adapter is an error.
    """
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter in {adapter_dir}: run the fine-tuning step (notebook 03) first")
    _, eval_ds = datasets_ or study_data(cfg)
    out = {}
    if with_bf16 and cfg.quant.precision != "bf16":
        bf16 = copy.deepcopy(cfg)
        bf16.quant = copy.deepcopy(PRECISION_PRESETS["bf16"])
        model, tokenizer = load(bf16)
        out["zero-shot-bf16"] = score_and_record(bf16, model, tokenizer, eval_ds, f"{cfg.name}-bf16-zero-shot",
                                                 "zero-shot", cost_questions=cost_questions)
        del model
        free_memory()
    model, tokenizer = load(cfg)
    out["zero-shot"] = score_and_record(cfg, model, tokenizer, eval_ds, f"{cfg.name}-zero-shot", "zero-shot",
                                         cost_questions=cost_questions)
    model = _with_adapter(model, adapter_dir)  # the base just scored, with the adapter on top
    out["fine-tuned"] = score_and_record(cfg, model, tokenizer, eval_ds, f"{cfg.name}-fine-tuned", "fine-tuned",
                                         extra={"adapter_dir": str(adapter_dir)}, cost_questions=cost_questions)
    del model
    free_memory()
    return out


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
    model, tokenizer = load(cfg, adapter=adapter)
    record = score_and_record(cfg, model, tokenizer, ds, cfg.name, "fine-tuned" if adapter else "zero-shot",
                              extra=skipped if loaded.skipped else None)
    print(report_text(results.load_run(record)))
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
