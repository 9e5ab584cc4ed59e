"""The study the book reports, as one resumable driver.

`python -m medcore study --parts zero-shot,main,kfold,ablations,scale --results results/study` runs, on
whatever device is there (sized for one large GPU; every part also runs on a CPU with `--set` overrides):

- zero-shot: the real-weight model on the whole evaluation split in bf16 and in NF4 + double quantization;
- main: QLoRA (NF4 + DQ + LoRA) trained on `data.train_source`, scored on the whole evaluation split;
- kfold: k-fold over the evaluation split: train on k-1 folds, score the held-out fold, so every question
  is scored exactly once by a model that never saw it; one record with all predictions;
- main with ``--seeds 0,1,2``: the same run once per ``train.seed``, for the spread (``position_metrics.seed_spread``);
- ablations: precision (bf16 LoRA, int8, nf4, fp4, double quant off), LoRA rank, targets and PEFT method,
  option-order augmentation off, training on the explanations, and label noise (the LLM-keyed training sample,
  other questions whose key an LLM wrote: never ground truth), each a record with every accuracy, interval,
  wall time and peak memory;
- scale: the Gemma-2B shape with RANDOM weights: footprint, training memory/speed, scoring speed per precision;
- footprint: only the measured footprint and per-layer error per precision of the profile's model (no GPU
  needed).

A part whose record exists is skipped (so a rerun continues), and a `--deadline` (seconds) stops before
starting a part that would not finish, leaving every finished record complete.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import pandas as pd

from medcore import records, subjects
from medcore.accuracy import accuracy_summary
from medcore.config import ConfigError, RunConfig, add_config_arguments, config_from_args
from medcore.flows import workflows
from medcore.scoring_cost import measure_cost

ABLATIONS = {  # run name -> overrides on the study profile
    "abl-bf16-lora": {"quant.precision": "bf16"},
    "abl-int8": {"quant.precision": "int8"},
    "abl-nf4-nodq": {"quant.double_quant": False},
    "abl-fp4-dq": {"quant.precision": "fp4"},
    "abl-r4": {"lora.r": 4, "lora.alpha": 8},
    "abl-r64": {"lora.r": 64, "lora.alpha": 128},
    "abl-attention": {"lora.targets": "attention"},
    "abl-dora": {"lora.method": "dora"},
    "abl-no-shuffle": {"data.shuffle_options": False},  # original option order: the key's letter prior is learnable
    "abl-explanation": {"data.train_on_explanation": True},
    # label noise: other training questions whose only key is an LLM-written letter (never ground truth)
    "abl-llm-keyed": {"data.train_source": lambda cfg: _sibling(cfg, "train_sample_llm_keyed.jsonl")},
}


def _sibling(cfg: RunConfig, file_name: str) -> str:
    """``local:`` + the file next to the profile's training file (shared/medmcqa holds both samples)."""
    from medcore.config import ConfigError

    source = cfg.data.train_source or ""
    if not source.startswith("local:"):
        raise ConfigError(f"data.train_source={source or None!r}: the {file_name} ablation needs a local "
                          "training file, e.g. local:../shared/medmcqa/train_sample.jsonl")
    return "local:" + str(Path(source.removeprefix("local:")).with_name(file_name))


def seed_runs(cfg: RunConfig, seeds: str | None) -> list[RunConfig]:
    """The main run once per ``train.seed`` in ``seeds`` ("0,1,2"; data order, LoRA initialisation, dropout and
    option orders): the profile's own seed keeps its name, another seed s is ``<name>-seed<s>``."""
    from medcore.config import ConfigError

    try:
        values = [int(s) for s in seeds.split(",")] if seeds else [cfg.train.seed]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give comma-separated whole numbers, e.g. 0,1,2") from None
    if len(set(values)) != len(values) or min(values) < 0:
        raise ConfigError(f"--seeds {seeds!r}: give distinct non-negative whole numbers, e.g. 0,1,2")
    return [cfg if s == cfg.train.seed else _variant(cfg, f"{cfg.name}-seed{s}", {"train.seed": s}) for s in values]


def _train_set(run: RunConfig, cfg: RunConfig, train_ds):
    """The study's training questions, or the run's own where it trains on another file (same evaluation set)."""
    return train_ds if run.data.train_source == cfg.data.train_source else workflows.study_data(run).train


def _variant(cfg: RunConfig, name: str, overrides: dict) -> RunConfig:
    return cfg.with_overrides({k: v(cfg) if callable(v) else v for k, v in overrides.items()}, name=name)


def _done(cfg: RunConfig, run_id: str) -> bool:
    return (Path(cfg.results_dir) / run_id / "metrics.json").is_file()


def zero_shot(cfg: RunConfig, eval_ds) -> None:
    for label in ("bf16", "nf4+dq"):
        run = _variant(cfg, f"{cfg.name}-{label.replace('+', '-')}", {})
        run.quant = copy.deepcopy(workflows.PRECISION_PRESETS[label])
        if _done(run, f"{run.name}-zero-shot"):
            continue
        model, tok = workflows.load(run)
        workflows.score_and_record(run, model, tok, eval_ds, f"{run.name}-zero-shot", "zero-shot")
        del model
        workflows.free_memory()


def train_and_score(cfg: RunConfig, train_ds, eval_ds, role: str = "fine-tuned") -> Path | None:
    """Train cfg on train_ds, score eval_ds with the adapter; records `<name>-train` and `<name>-<role>`."""
    if _done(cfg, f"{cfg.name}-{role}"):
        return None
    start = time.perf_counter()
    _, result = workflows.finetune(cfg, datasets_=(train_ds, eval_ds))  # frees its model's memory itself
    model, tok = workflows.load(cfg, adapter=result.adapter_dir)
    record = workflows.score_and_record(cfg, model, tok, eval_ds, f"{cfg.name}-{role}", role, cost=False,
                                        extra={"adapter_dir": result.adapter_dir, "train_metrics": result.metrics,
                                               "wall_seconds_train_and_score": time.perf_counter() - start})
    del model
    workflows.free_memory()
    return record


def kfold(cfg: RunConfig, eval_ds, k: int, folds: list[int] | None = None) -> None:
    """Train and score the folds in `folds` (default all k; separate processes can take different folds), then,
    once every fold has its record, write the combined one."""
    run_id = f"{cfg.name}-kfold{k}"
    if _done(cfg, run_id):
        return
    splits = list(subjects.kfold_splits(eval_ds, k, seed=cfg.data.seed))
    names = [f"{cfg.name}-kfold{k}-fold{fold}" for fold in range(k)]
    for fold in folds if folds is not None else range(k):
        train_idx, test_idx = splits[fold]
        train_and_score(_variant(cfg, names[fold], {}), eval_ds.select(train_idx), eval_ds.select(test_idx),
                        role="fold")
    missing = [fold for fold in range(k) if not _done(cfg, f"{names[fold]}-fold")]
    if missing:
        print(f"k-fold: folds {missing} have no record yet; the combined record waits for them")
        return
    frames, fold_metrics = [], []
    for fold in range(k):
        fcfg = _variant(cfg, names[fold], {})
        preds = records.load_predictions(Path(cfg.results_dir) / f"{fcfg.name}-fold").assign(fold=fold)
        frames.append(preds)
        fold_metrics.append(records.load_run(Path(cfg.results_dir) / f"{fcfg.name}-train")["metrics"])
    preds = pd.concat(frames, ignore_index=True)
    if sorted(preds["id"]) != sorted(eval_ds["id"]):
        raise RuntimeError("k-fold predictions do not cover every question exactly once")
    metrics = {"role": "fine-tuned-kfold", "k": k, "precision": workflows.precision_label(cfg.quant),
               "real_weights": True, **workflows.summary_tables(accuracy_summary(preds)),
               "folds": [{"fold": i, "examples_per_s": m.get("examples_per_s"), "peak_memory_bytes":
                          m.get("peak_memory_bytes"), "wall_seconds": m.get("wall_seconds")}
                         for i, m in enumerate(fold_metrics)]}
    records.write_run_record(cfg.results_dir, run_id, cfg.to_dict(), metrics, predictions=preds,
                             extra={"real_weights": True, "protocol": f"{k}-fold over the evaluation split"},
                             overwrite=True)


SCALE_TRAIN = {"train.max_steps": 30, "train.token_budget": 4096, "train.max_batch_size": 128,
               "train.gradient_checkpointing": True, "train.eval_steps": 10**6, "train.save_steps": 10**6,
               "train.logging_steps": 5}


def scale(cfg: RunConfig, eval_ds, n_questions: int = 1024, train_ds=None) -> None:
    """RANDOM-weight Gemma-2B shape per precision: footprint, scoring cost and (with `train_ds`) LoRA training cost.

    Training cost: ``SCALE_TRAIN`` (30 steps of 4,096-token batches, gradient checkpointing, the study's LoRA and
    optimizer rule) on `train_ds`; the record ``<run>-train`` holds real tokens/s (also steady-state) and peak memory.
    """
    big = _variant(cfg, "scale-gemma-2b-random", {"model.source": "random:gemma-2b"})
    if not _done(big, f"{big.name}-footprint"):
        workflows.footprints(big, presets=["bf16", "int8", "nf4", "nf4+dq"], error_vs_bf16=False)  # frees on exit
    sample = subjects.stratified_subset(eval_ds, min(n_questions, len(eval_ds)), seed=0)
    for label in ("bf16", "int8", "nf4", "nf4+dq"):
        run = _variant(big, f"scale-gemma-2b-random-{label.replace('+', '-')}", {})
        run.quant = copy.deepcopy(workflows.PRECISION_PRESETS[label])
        if _done(run, f"{run.name}-cost"):
            continue
        model, tok = workflows.load(run)
        cost = measure_cost(model, tok, sample, batch_sizes=(1, 64, 256), n_latency=run.eval.latency_batches,
                            max_length=run.data.max_length)
        records.write_run_record(run.results_dir, f"{run.name}-cost", run.to_dict(),
                                 {"role": "cost", "precision": label, "real_weights": False, "cost": cost},
                                 extra={"real_weights": False, "note": "random weights: size/speed only"},
                                 overwrite=True)
        del model
        workflows.free_memory()
        if train_ds is not None and not _done(run, f"{run.name}-train"):
            timed = _variant(run, run.name, SCALE_TRAIN)
            workflows.finetune(timed, datasets_=(train_ds, eval_ds.select(range(min(64, len(eval_ds))))))


PARTS = ("zero-shot", "main", "kfold", "ablations", "scale", "footprint")


def _check_arguments(args) -> None:
    """Refuse a bad argument before any data or model loads, naming the allowed values."""
    for flag, given, known in (("--parts", args.parts, PARTS), ("--ablations", args.ablations, tuple(ABLATIONS))):
        unknown = [name for name in given.split(",") if name not in known]
        if unknown:
            raise ConfigError(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    if "kfold" in args.parts.split(",") and args.k < 2:
        raise ConfigError(f"--k {args.k}: k-fold needs at least 2 folds")
    if args.folds is not None:
        try:
            folds = [int(f) for f in args.folds.split(",")]
        except ValueError:
            folds = None
        if not folds or any(not 0 <= f < args.k for f in folds):
            raise ConfigError(f"--folds {args.folds!r}: give fold numbers from 0 to {args.k - 1}, e.g. 0,1")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="medcore study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, profile="study")
    p.add_argument("--parts", default="zero-shot,main,kfold,ablations")
    p.add_argument("--ablations", default=",".join(ABLATIONS))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--folds", default=None, help="only these k-fold folds, e.g. 0,1 (default: all)")
    p.add_argument("--deadline", type=float, default=None, help="seconds; start no part after this")
    p.add_argument("--seeds", default=None, help="train.seed of each main run, e.g. 0,1,2 (default: the profile's)")
    args = p.parse_args(argv)
    _check_arguments(args)
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    train_ds, eval_ds = workflows.study_data(cfg)
    print(f"study {cfg.name}: train {len(train_ds)}, eval {len(eval_ds)} questions, results in {cfg.results_dir}")
    steps = []
    for part in args.parts.split(","):
        if part == "zero-shot":
            steps.append(("zero-shot", lambda: zero_shot(cfg, eval_ds)))
        elif part == "main":
            for run in seed_runs(cfg, args.seeds):
                steps.append((f"main {run.name}", lambda run=run: train_and_score(run, train_ds, eval_ds)))
        elif part == "kfold":
            folds = [int(f) for f in args.folds.split(",")] if args.folds else None
            steps.append(("kfold", lambda: kfold(cfg, eval_ds, args.k, folds)))
        elif part == "ablations":
            for name in args.ablations.split(","):
                run = _variant(cfg, name, ABLATIONS[name])
                steps.append((name, lambda run=run: train_and_score(run, _train_set(run, cfg, train_ds), eval_ds)))
        elif part == "scale":
            steps.append(("scale", lambda: scale(cfg, eval_ds, train_ds=train_ds)))
        elif part == "footprint":  # the model-size row for cfg's model; runs anywhere, no data needed
            steps.append(("footprint", lambda: workflows.footprints(
                cfg, presets=["bf16", "int8", "nf4", "nf4+dq", "fp4+dq"], error_vs_bf16=True)))
    for name, step in steps:
        if args.deadline and time.perf_counter() - t0 > args.deadline:
            print(f"deadline reached: not starting {name}")
            continue
        start = time.perf_counter()
        step()
        print(f"[{time.perf_counter() - t0:7.1f}s] {name} done in {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
