"""The study's steps as functions: what the CLI, the notebooks and the GPU study driver call.

Each step loads what it needs from one `RunConfig`, measures, and writes one run record
(`records.write_run_record`) whose metrics are flat numbers plus small tables, so `medcore.report.tables` can put
every run side by side. A record always says whether its weights were real.

Steps and the records they write (``<cfg.results_dir>/<run id>``):

- :func:`study_data` - the (train, eval) questions of a config; :func:`data_record` -> ``<name>-data``;
- :func:`footprints` - size, per-layer error and a small latency sample per precision -> ``<name>-footprint``;
- :func:`finetune` - QLoRA (or LoRA on bf16) -> ``<name>-train`` (+ the adapter);
- :func:`before_after` - zero-shot and fine-tuned scoring on the same questions -> ``<name>-zero-shot``,
  ``<name>-bf16-zero-shot`` (optional), ``<name>-fine-tuned``;
- :func:`score_and_record` - one model scored on some questions -> the record named by its caller.

The training folder's rules are :mod:`medcore.flows.train_folder`'s; the ``python -m medcore evaluate`` command is
:mod:`medcore.flows.evaluate_command`.
"""
from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import peft
import torch

from medcore import data, evaluate, lora, models, prompts, quantize, records, schema, subjects, train
from medcore.accuracy import accuracy_summary
from medcore.config import QuantConfig, RunConfig
from medcore.flows.train_folder import interrupted_training, prepare_output_dir
from medcore.scoring_cost import measure_cost

PRECISION_PRESETS = {  # label -> QuantConfig; the footprint/cost comparison of notebook 02
    "bf16": QuantConfig("bf16", False), "int8": QuantConfig("int8", False),
    "nf4": QuantConfig("nf4", False), "nf4+dq": QuantConfig("nf4", True),
    "fp4": QuantConfig("fp4", False), "fp4+dq": QuantConfig("fp4", True),
}


def precision_label(q: QuantConfig) -> str:
    return q.label


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
    return records.write_run_record(cfg.results_dir, f"{cfg.name}-data", cfg.to_dict(), metrics, predictions=ids,
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
    return records.write_run_record(cfg.results_dir, run_id, cfg.to_dict(), metrics, predictions=preds,
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
    return records.write_run_record(cfg.results_dir, f"{cfg.name}-footprint", cfg.to_dict(), metrics,
                                    predictions=pred, extra=note, overwrite=True)


def finetune(cfg: RunConfig, output_dir: str | Path | None = None, resume: bool = False,
             datasets_: tuple | None = None, eval_questions: int | None = None) -> tuple[Path, Any]:
    """QLoRA for a config: load quantized, attach the adapter, train, record; returns (record, TrainResult).

    Checkpoints and ``adapter/`` go to ``output_dir`` (default ``<results_dir>/../checkpoints/<name>``), prepared
    by :func:`~medcore.flows.train_folder.prepare_output_dir`: with ``resume`` training continues from its last
    checkpoint if the settings are the run's. ``eval_questions`` keeps a stratified subset of the evaluation
    questions for the evaluation loss (its trend; nothing is selected by it). Ctrl-C keeps the checkpoints saved so
    far.
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
    record = records.write_run_record(cfg.results_dir, f"{cfg.name}-train", cfg.to_dict(), metrics,
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
