"""Scale-out with accelerate: QLoRA on several GPUs (DDP), a model too big for one GPU (FSDP + QLoRA), and
evaluation sharded over processes. Configs ship in ``medcore/scale/accelerate/``::

    accelerate launch --config_file medcore/scale/accelerate/ddp.yaml -m medcore.scale.distributed \\
        train --profile paper [--set k=v]
    accelerate launch --config_file medcore/scale/accelerate/fsdp_qlora.yaml -m medcore.scale.distributed \\
        train --profile paper
    accelerate launch --config_file medcore/scale/accelerate/ddp.yaml -m medcore.scale.distributed \\
        evaluate --profile paper [--adapter DIR]

DDP + QLoRA: every process loads the whole 4-bit model on its own device (``cuda:<local rank>``), attaches the
same seeded adapter and runs the same Trainer (``train.train``); the Trainer wraps the model in DDP and
averages gradients. medcore's token-budget batch sampler goes through ``accelerator.prepare``, which wraps it in
accelerate's ``BatchSamplerShard``: every process draws the same (seeded, per-epoch) batch order and process
``r`` of ``W`` takes batches ``r, r+W, r+2W, ...``, so processes get different batches; when the number of batches
is not a multiple of ``W`` the last round is completed with the epoch's first batches, so every process takes
the same number of steps. One optimizer step thus sees ``W`` token-budget batches (``train.token_budget`` is per
device, like ``per_device_train_batch_size``) and its gradient is the mean of the ``W`` per-batch mean losses:
the same update as one process accumulating those ``W`` batches.

FSDP + QLoRA: the 4-bit weights are stored in bf16 (``bnb_4bit_quant_storage``, with bf16 for the rest of the
model), so FSDP can flatten and shard them; the Trainer installs peft's ``fsdp_auto_wrap_policy`` (LoRA layers
wrapped apart from the frozen ones, needed with ``use_orig_params: false``) and the quant-storage mixed
precision. The final adapter is saved from a full state dict. ``train.optimizer=auto`` becomes ``adamw_torch``
(peft's FSDP notes: ``paged_adamw_8bit`` fails when saving an FSDP checkpoint).

Evaluation (:func:`score_sharded`): process ``r`` scores ``records[r::W]`` with ``evaluate.score_choices``; the
shards are gathered with ``gather_object`` and interleaved back, so every question is scored exactly once and
rows come back in the input order on every process (accelerate's ``gather_for_metrics`` would pad uneven shards
with duplicates). Each process holds a whole model (DDP-style).

Run records and ``train_result.json`` are written by the main process only; throughput counts the tokens and
examples of all processes. On a CPU (tests) processes talk over gloo.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, gather_object, parse_flag_from_env
from transformers import TrainerCallback

from medcore import lora, models, quantize, records, train as training
from medcore.accuracy import accuracy_summary
from medcore.config import add_config_arguments, config_from_args
from medcore.evaluate import keyed_records, score_choices
from medcore.flows.train_folder import interrupted_training, prepare_output_dir
from medcore.flows.workflows import eval_batch_size, model_note, precision_label, study_data, summary_tables
from medcore.scale.scaleout import CONFIG_DIR, config_path  # noqa: F401 - the shipped configs, named with the launcher


# ---- processes -----------------------------------------------------------------------------------------------

def process_state() -> PartialState:
    """The distributed state (initializes the process group under a launcher; gloo on a machine without CUDA)."""
    return PartialState(cpu=not torch.cuda.is_available())


def local_device(state: PartialState) -> torch.device:
    """Where this process keeps its model: ``cuda:<local rank>``, or the CPU."""
    return state.device if state.device.type == "cuda" else torch.device("cpu")


def is_fsdp(state: PartialState) -> bool:
    """Launched with an FSDP config. PartialState reports such a launch as MULTI_GPU (only AcceleratorState, made
    later by the Trainer, turns it into FSDP), so the launcher's ``ACCELERATE_USE_FSDP`` is read as well."""
    return state.distributed_type == DistributedType.FSDP or parse_flag_from_env("ACCELERATE_USE_FSDP")


# ---- sharded evaluation --------------------------------------------------------------------------------------

def shard(n: int, rank: int, world: int) -> list[int]:
    """Positions process `rank` of `world` scores: rank, rank+world, ... (shards differ in size by at most one)."""
    return list(range(rank, n, world))


def reassemble(shards: Sequence[pd.DataFrame | None], n: int) -> pd.DataFrame:
    """Interleave per-process results (shard r holds positions r, r+W, ...) back into input order.

    Raises if any position is missing or present twice: every question is scored exactly once.
    """
    world = len(shards)
    parts, positions = [], []
    for rank, frame in enumerate(shards):
        if frame is None or len(frame) == 0:
            continue
        parts.append(frame.reset_index(drop=True))
        positions.extend(shard(n, rank, world)[:len(frame)])
        if len(frame) != len(shard(n, rank, world)):
            raise ValueError(f"process {rank} returned {len(frame)} rows for {len(shard(n, rank, world))} questions")
    if sorted(positions) != list(range(n)):
        raise ValueError(f"shards cover {len(set(positions))} of {n} positions ({len(positions)} rows)")
    if not parts:
        return pd.DataFrame()
    whole = pd.concat(parts, ignore_index=True)
    return whole.iloc[pd.Series(positions).argsort().to_numpy()].reset_index(drop=True)


def score_sharded(model, tokenizer, records: Any, batch_size: int = 16, max_length: int = 512,
                  state: PartialState | None = None, progress: bool = False) -> pd.DataFrame:
    """``evaluate.score_choices`` over all processes: each scores its shard; every process gets all rows, in order.

    `records`: anything ``score_choices`` takes (Dataset, DataFrame, list of dicts). Same columns as
    ``score_choices``. Outside a launcher (one process) this is ``score_choices``.
    """

    state = state or process_state()
    records = keyed_records(records)  # every process checks the answer keys, so none waits for a failed one
    mine = [records[i] for i in shard(len(records), state.process_index, state.num_processes)]
    frame = score_choices(model, tokenizer, mine, batch_size=batch_size, max_length=max_length,
                          progress=progress and state.is_main_process) if mine else None
    shards = gather_object([frame]) if state.num_processes > 1 else [frame]
    return reassemble(shards, len(records))


# ---- loading -------------------------------------------------------------------------------------------------

def load_for_process(cfg, state: PartialState, adapter: str | Path | None = None, fsdp: bool = False):
    """(model, tokenizer) of the config on this process's device; FSDP: 4-bit weights stored in bf16."""

    storage = {"quant_storage": torch.bfloat16, "dtype": torch.bfloat16} \
        if fsdp and cfg.quant.precision in ("nf4", "fp4") else {}
    with state.main_process_first():  # the first process fills caches (embedded model, downloads) alone
        model = quantize.load_quantized(cfg.model.source, cfg.quant, device=local_device(state), **storage)
        tokenizer = models.load_tokenizer(cfg.model.source)
    if adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, str(adapter))
        quantize.disable_cpu_repack(model)
    return model, tokenizer


def _data(cfg, state: PartialState):

    with state.main_process_first():
        train_ds, eval_ds = study_data(cfg)
    return train_ds, eval_ds


class FullStateDictAtEnd(TrainerCallback):
    """FSDP: checkpoints stay sharded; the final adapter is saved from a full state dict (peft's FSDP recipe)."""

    def on_train_end(self, args, state, control, **kwargs):
        from accelerate.state import AcceleratorState

        plugin = getattr(AcceleratorState(), "fsdp_plugin", None)
        if plugin is not None:
            plugin.set_state_dict_type("FULL_STATE_DICT")


# ---- training and evaluation ----------------------------------------------------------------------------------

def _global_metrics(metrics: dict[str, Any], state: PartialState) -> dict[str, Any]:
    """Throughput over all processes: tokens and examples summed, time of the slowest process."""
    keys = ("real_tokens", "examples", "step_seconds", "peak_memory_bytes", "steady_real_tokens_per_s",
            "resident_memory_bytes")
    every = gather_object([{k: metrics.get(k) for k in keys}]) if state.num_processes > 1 else [metrics]
    out = dict(metrics)
    out["real_tokens"] = sum(m["real_tokens"] for m in every)
    out["examples"] = sum(m["examples"] for m in every)
    seconds = max(max(m["step_seconds"] for m in every), 1e-9)
    out.update(step_seconds=seconds, real_tokens_per_s=out["real_tokens"] / seconds,
               examples_per_s=out["examples"] / seconds, world_size=state.num_processes,
               distributed_type=str(state.distributed_type).split(".")[-1],
               peak_memory_bytes_per_process=[m["peak_memory_bytes"] for m in every],
               resident_memory_bytes_per_process=[m.get("resident_memory_bytes") for m in every])
    steady = [m.get("steady_real_tokens_per_s") for m in every]  # processes step in lockstep: rates add up
    out["steady_real_tokens_per_s"] = sum(steady) if all(r is not None for r in steady) else None
    return out


def train(cfg, output_dir: str | Path | None = None, resume: bool = False) -> tuple[Path | None, Any]:
    """QLoRA for a config on every process of the launch; returns (run record or None off the main process, result)."""

    state = process_state()
    fsdp = is_fsdp(state)
    cfg = cfg.with_overrides({"train.optimizer": "adamw_torch"} if fsdp and cfg.train.optimizer == "auto" else {})
    train_ds, eval_ds = _data(cfg, state)
    output_dir = Path(output_dir or Path(cfg.results_dir).parent / "checkpoints" / cfg.name)
    prepare_output_dir(cfg, output_dir, resume, write=False)  # every process refuses the same mistakes
    if state.is_main_process:
        prepare_output_dir(cfg, output_dir, resume)
    state.wait_for_everyone()
    model, tokenizer = load_for_process(cfg, state, fsdp=fsdp)
    torch.manual_seed(cfg.train.seed)  # the same adapter initialisation on every process
    model = lora.attach_adapter(model, cfg.lora, quantized=cfg.quant.precision != "bf16")
    params = lora.trainable_parameters(model)
    try:
        result = training.train(cfg, model, tokenizer, train_ds, eval_ds, output_dir, resume=resume,
                                callbacks=[FullStateDictAtEnd()] if fsdp else None)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_training(output_dir)) from None
    result.metrics = _global_metrics(result.metrics, state)
    record = None
    if state.is_main_process:
        (output_dir / "train_result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        note = model_note(model)
        metrics = {"role": "train", "precision": precision_label(cfg.quant), "n_train": len(train_ds),
                   "n_eval": len(eval_ds), "adapter_dir": result.adapter_dir, "parameters": params,
                   **result.metrics, "real_weights": note["real_weights"]}
        record = records.write_run_record(cfg.results_dir, f"{cfg.name}-train", cfg.to_dict(), metrics,
                                          loss_history=result.loss_history, extra=note, overwrite=True)
    state.wait_for_everyone()
    return record, result


def evaluate(cfg, adapter: str | Path | None = None, run_id: str | None = None) -> tuple[Path | None, pd.DataFrame]:
    """Score the config's evaluation questions sharded over the processes; the main process writes the record."""

    state = process_state()
    cfg.validate()
    _, eval_ds = _data(cfg, state)
    model, tokenizer = load_for_process(cfg, state, adapter=adapter)
    start = time.perf_counter()
    preds = score_sharded(model, tokenizer, eval_ds, batch_size=eval_batch_size(cfg, model.device),
                          max_length=cfg.data.max_length, state=state, progress=True)
    seconds = time.perf_counter() - start
    record = None
    if state.is_main_process:
        role = "fine-tuned" if adapter else "zero-shot"
        note = {**model_note(model), **({"adapter_dir": str(adapter)} if adapter else {})}
        metrics = {"role": role, "precision": precision_label(cfg.quant), "score_seconds": seconds,
                   "world_size": state.num_processes, **summary_tables(accuracy_summary(preds)),
                   "real_weights": note["real_weights"]}
        record = records.write_run_record(cfg.results_dir, run_id or f"{cfg.name}-{role}", cfg.to_dict(), metrics,
                                          predictions=preds, extra=note, overwrite=True)
        print(f"accuracy {metrics['accuracy']:.3f} on {len(preds)} questions, {state.num_processes} processes; "
              f"run record: {record}")
    state.wait_for_everyone()
    return record, preds


# ---- command line ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="accelerate launch --config_file medcore/scale/accelerate/ddp.yaml -m "
                                          "medcore.scale.distributed", description="medcore on several processes")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "QLoRA for a profile (DDP or FSDP, from the accelerate config)"),
                       ("evaluate", "score the profile's evaluation questions, sharded over processes")):
        p = sub.add_parser(name, help=text)
        add_config_arguments(p)
        if name == "train":
            p.add_argument("--output-dir", default=None)
            p.add_argument("--resume", action="store_true")
        else:
            p.add_argument("--adapter", default=None, help="a PEFT adapter folder to apply")
            p.add_argument("--run-id", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(args)
    if args.command == "train":
        train(cfg, output_dir=args.output_dir, resume=args.resume)
    else:
        evaluate(cfg, adapter=args.adapter, run_id=args.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
