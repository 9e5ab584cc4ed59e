"""Fine-tuning on the Hugging Face Trainer with an answer-only loss that computes the LM head where it is needed.

The step (:func:`answer_only_loss`): run the decoder body, keep the hidden states at positions whose next token is
labelled (the answer letter; with ``data.train_on_explanation`` also the explanation), apply the LM head (and
Gemma-2/3's final logit soft-capping) to those rows only, cross-entropy. With Gemma's 256k-262k vocabulary the
full-sequence head would dominate time and memory; the result equals the full-logits Hugging Face loss.

Supported (``RunConfig.train``): cosine / linear / constant schedule with linear warm-up (``warmup_ratio`` of the
total steps); gradient checkpointing (``use_reentrant=False``); optimizer ``auto`` = ``paged_adamw_8bit`` on CUDA,
``adamw_torch`` on CPU, or any named one; token-budget batches (``token_budget`` tokens per batch padding included,
at most ``max_batch_size`` rows, length-sorted, batch order shuffled with ``seed`` and the epoch); evaluation loss
every ``eval_steps`` (always on the answer letter only, so runs with and without explanations compare); checkpoints
every ``save_steps`` and resume from the last complete one (a run killed while saving leaves a folder without
``trainer_state.json``, which is skipped); the adapter saved in PEFT format under ``<output_dir>/adapter``.
A NaN or infinite loss or gradient stops training with :class:`NonFiniteLossError` naming the step, before the
next log, evaluation or save (:class:`FiniteGuard`), so every checkpoint holds finite weights. Before the model
runs, examples are checked: one whose choices alone exceed ``data.max_length`` raises (or with ``data.on_invalid="skip"`` is dropped and counted), one
longer than ``train.token_budget`` raises a ConfigError naming it; questions cut to fit are counted.
bf16 autocast (``train.autocast``: auto = on CUDA, off on CPU; ``bf16`` forces it, on a CPU too) around the whole
loss, not only ``model.forward`` as accelerate does: the answer-only loss calls the submodules. Under autocast, peft's copy of
each LoRA input to the adapter's float32 is skipped (:func:`lora_input_float32`; ``train.lora_input_float32``
keeps it): autocast would cast it back to bf16 before the matmul, so the copies cost time and memory for nothing.

:func:`train` returns a :class:`TrainResult` and writes it to ``<output_dir>/train_result.json``: the loss history
(train loss, learning rate, eval loss per logged step), throughput (real, non-padding tokens/s and examples/s over
the training steps of this call, evaluation and saving excluded), ``train_loss`` over the whole run (resumed or
not), ``truncated_train`` / ``skipped_train`` (and ``_eval``) counts, and peak memory during training (CUDA allocator
peak, or the process's peak RSS, reset at the start of training where Linux allows it: ``process_rss``, else
``process_rss_lifetime``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import is_tensorboard_available

from medcore.config import ConfigError, RunConfig
from medcore.measure import PeakMemory
from medcore.models import causal_lm
from medcore.quantize import disable_cpu_repack
from medcore.step_modes import (compiled_layers, lora_input_float32, lora_inputs_in_bf16,  # noqa: F401 - old names
                                skips_lora_input_copy, skips_lora_input_float32, uses_autocast)
from medcore.prompts import IGNORE_INDEX, Collator, answer_token_ids, encode_example, token_budget_batches
from medcore.steps import (  # noqa: F401 - NonFiniteLossError stays importable from medcore.train
    REAL_TOKENS, EpochCallback, FiniteGuard, NonFiniteLossError, RealTokenCounts, ThroughputCallback,
    TokenBudgetBatchSampler, last_checkpoint,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: str
    loss_history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def encode_dataset(ds: datasets.Dataset, tokenizer, max_length: int, with_explanation: bool = False,
                   on_invalid: str = "raise") -> datasets.Dataset:
    """MedMCQA records -> id, input_ids, labels (answer letter, optionally the explanation), length, truncated.

    A record that cannot be encoded (its choices alone exceed `max_length`, no or a bad answer) raises a
    ValueError naming its id, or with ``on_invalid="skip"`` is dropped; drops and prompts whose question was cut
    to fit are counted in a warning (``train`` also puts them in its metrics).
    """
    letters = answer_token_ids(tokenizer)
    rows, skipped = [], []
    for i, record in enumerate(ds):
        try:
            rows.append({"id": str(record.get("id", i)),
                         **encode_example(record, tokenizer, max_length, letters, with_explanation)})
        except ValueError as err:
            if on_invalid != "skip":
                raise
            skipped.append(str(err))
    truncated = sum(r["truncated"] for r in rows)
    if truncated or skipped:
        log.warning("encoding %d records at data.max_length=%d: %d questions cut to fit, %d records skipped%s",
                    len(ds), max_length, truncated, len(skipped), f" (first: {skipped[0]})" if skipped else "")
    features = datasets.Features({"id": datasets.Value("string"),
                                  "input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int64")),
                                  "length": datasets.Value("int32"), "truncated": datasets.Value("bool")})
    return datasets.Dataset.from_list(rows, features=features)


def answer_only_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions, with the LM head applied to those positions only."""
    lm = causal_lm(model)
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # position t predicts token t+1
    logits = lm.lm_head(hidden[:, :-1][keep])
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[keep])


def loss_through_wrapper(wrapper: torch.nn.Module, inner: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`answer_only_loss` of `inner` computed inside the forward of its DDP / FSDP `wrapper`.

    DDP prepares its gradient all-reduce and FSDP gathers the root's sharded parameters only in their own forward,
    so the loss must run there: `inner`'s forward is swapped for the loss for one call.
    """
    saved = inner.__dict__.get("forward")  # accelerate may have put an autocast forward there
    inner.forward = lambda input_ids, attention_mask, labels: answer_only_loss(inner, input_ids, attention_mask, labels)
    try:
        return wrapper(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


class AnswerOnlyTrainer(Trainer):
    """Trainer with the answer-only loss and token-budget batches; counts real tokens for throughput."""

    def __init__(self, *args, token_budget: int, max_batch_size: int, pad_token_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_budget, self.max_batch_size = token_budget, max_batch_size
        self.collate = RealTokenCounts(Collator(pad_token_id))
        self.seen = {"tokens": 0, "examples": 0}
        self.finite = FiniteGuard()
        self.train_sampler: TokenBudgetBatchSampler | None = None
        self.add_callback(EpochCallback(self))
        self.add_callback(self.finite)

    def _loader(self, ds: datasets.Dataset, sampler: TokenBudgetBatchSampler) -> DataLoader:
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=self.collate, pin_memory=False)
        return self.accelerator.prepare(loader)

    def _sampler(self, ds: datasets.Dataset, shuffle: bool) -> TokenBudgetBatchSampler:
        return TokenBudgetBatchSampler(ds["length"], self.token_budget, self.max_batch_size, shuffle, self.args.seed)

    def get_train_dataloader(self) -> DataLoader:
        self.train_sampler = self._sampler(self.train_dataset, shuffle=True)
        return self._loader(self.train_dataset, self.train_sampler)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._loader(ds, self._sampler(ds, shuffle=False))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        real_tokens = inputs.pop(REAL_TOKENS, None)
        if training:  # counted on the CPU by the collator: reading a device tensor here would wait for the GPU
            self.seen["tokens"] += real_tokens if real_tokens is not None else int(inputs["attention_mask"].sum())
            self.seen["examples"] += inputs["input_ids"].shape[0]
        args = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        inner = self.accelerator.unwrap_model(model)
        # accelerate wraps its autocast around model.forward only; this loss runs the submodules directly
        with self.accelerator.autocast():
            loss = answer_only_loss(model, *args) if inner is model else loss_through_wrapper(model, inner, *args)
        if training:
            self.finite.note("loss", loss.detach(), self.state.global_step + 1)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def release_optimizer_overrides(model: torch.nn.Module) -> int:
    """Drop bitsandbytes' references to `model`'s modules; returns how many were dropped.

    With an 8-bit bitsandbytes optimizer (``paged_adamw_8bit``, medcore's default on CUDA) the Trainer registers
    every ``nn.Embedding`` with bitsandbytes' process-wide ``GlobalOptimManager`` (to optimize it in 32 bits), and
    nothing ever unregisters it: the manager keeps the module, so the embedding of every model trained in a process
    stays allocated after the model is deleted, and each later run in the process starts with it still held.
    """
    try:
        from bitsandbytes.optim import GlobalOptimManager
    except ImportError:
        return 0
    manager = GlobalOptimManager.get_instance()
    ours = {id(m) for m in model.modules()}
    kept = [t for t in manager.module_weight_config_triple if id(t[0]) not in ours]
    dropped = len(manager.module_weight_config_triple) - len(kept)
    manager.module_weight_config_triple = kept
    return dropped


def resolve_optimizer(name: str, on_cuda: bool) -> str:
    if name == "auto":
        return "paged_adamw_8bit" if on_cuda else "adamw_torch"
    return name


# transformers 5.24 renamed gradient checkpointing to activation checkpointing (TrainingArguments and the model's
# *_enable/*_disable methods); older 5.x versions still take the old name
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")


def set_checkpointing(model, on: bool) -> None:
    """Non-reentrant gradient checkpointing of `model` (PEFT-wrapped or not) on or off."""
    causal = causal_lm(model)
    if on:
        getattr(causal, f"{CHECKPOINTING}_enable")(**{f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}})
    else:
        getattr(causal, f"{CHECKPOINTING}_disable")()


def training_arguments(cfg: RunConfig, output_dir: str | Path, total_steps: int, on_cuda: bool,
                       has_eval: bool) -> TrainingArguments:
    t = cfg.train
    ckpt = CHECKPOINTING
    return TrainingArguments(
        output_dir=str(output_dir), learning_rate=t.learning_rate, num_train_epochs=t.epochs, max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler, warmup_steps=math.ceil(t.warmup_ratio * total_steps),
        weight_decay=t.weight_decay, optim=resolve_optimizer(t.optimizer, on_cuda), gradient_accumulation_steps=1,
        **{ckpt: t.gradient_checkpointing, f"{ckpt}_kwargs": {"use_reentrant": False}},
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps, save_strategy="steps",
        save_steps=t.save_steps, logging_steps=t.logging_steps, seed=t.seed,
        bf16=uses_autocast(cfg, on_cuda), use_cpu=not on_cuda, remove_unused_columns=False,
        # TensorBoard events land in <output_dir>/runs/<date>_<host>/, the Trainer's default (5.24 has no logging_dir)
        report_to=t.report_to if t.report_to != "auto" else ("tensorboard" if is_tensorboard_available() else "none"),
        dataloader_pin_memory=on_cuda, label_names=["labels"],
        logging_nan_inf_filter=False,  # its check reads the loss every step; FiniteGuard stops on one instead
    )


def loss_history(log_history: list[dict]) -> list[dict]:
    """Trainer logs -> one row per logged step: step, epoch, loss, learning_rate, grad_norm, eval_loss."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "loss" not in entry and "eval_loss" not in entry:
            continue
        row = rows.setdefault(entry["step"], {"step": entry["step"], "epoch": entry.get("epoch")})
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss"):
            if key in entry:
                row[key] = entry[key]
    return [rows[s] for s in sorted(rows)]


def run_train_loss(history: list[dict], start_step: int, this_call_loss: float, global_step: int) -> float:
    """The mean training loss over every step of the run, also when it was resumed at `start_step`.

    The Trainer's ``training_loss`` averages the steps of the current call only; the steps before a resume are
    taken from the logged losses (each weighted by the steps it averages). Exact when the checkpoint's step was a
    logging step (``save_steps`` a multiple of ``logging_steps``).
    """
    if start_step <= 0 or global_step <= start_step:
        return this_call_loss
    before, last = 0.0, 0
    for row in history:
        if "loss" in row and row["step"] <= start_step:
            before += row["loss"] * (row["step"] - last)
            last = row["step"]
    return (before + this_call_loss * (global_step - start_step)) / global_step


def _check_fits_budget(ds: datasets.Dataset, token_budget: int, which: str) -> None:
    """Refuse, before the model runs, an encoded example longer than the token budget (it fits in no batch)."""
    lengths = ds["length"]
    if not lengths:
        return
    i = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[i] > token_budget:
        rid = ds[i]["id"] if "id" in ds.column_names else f"#{i}"
        raise ConfigError(f"train.token_budget={token_budget} is smaller than {which} example {rid!r} "
                          f"({lengths[i]} tokens); raise train.token_budget to at least {lengths[i]} "
                          "or lower data.max_length")


def train(cfg: RunConfig, model: torch.nn.Module, tokenizer, train_ds: datasets.Dataset,
          eval_ds: datasets.Dataset | None, output_dir: str | Path, resume: bool = False,
          callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune `model` (with its adapter attached) on `train_ds`; evaluate on `eval_ds` (None: no evaluation).

    Datasets may be MedMCQA records (encoded here with ``data.max_length`` / ``data.train_on_explanation``; with
    ``data.shuffle_options`` the training records get a fresh balanced option order every epoch,
    ``option_order.ShuffledOptions``) or already encoded (input_ids, labels, length). ``resume=True`` continues from the last checkpoint in
    `output_dir` if there is one (else starts fresh). Extra `callbacks` go to the Trainer.
    """
    output_dir = Path(output_dir)
    disable_cpu_repack(model)  # evaluation passes must not repack 4-bit weights on an AVX512-BF16 CPU
    on_cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    counts = {"n_train_examples": len(train_ds), "n_eval_examples": len(eval_ds) if eval_ds is not None else 0}
    if "input_ids" not in train_ds.column_names and cfg.data.shuffle_options:  # a fresh option order each epoch
        from medcore.option_order import ShuffledOptions

        train_ds = ShuffledOptions(train_ds, tokenizer, cfg.data.max_length, cfg.data.train_on_explanation,
                                   cfg.data.on_invalid, seed=cfg.train.seed)
    elif "input_ids" not in train_ds.column_names:
        train_ds = encode_dataset(train_ds, tokenizer, cfg.data.max_length, cfg.data.train_on_explanation,
                                  cfg.data.on_invalid)
    if eval_ds is not None and "input_ids" not in eval_ds.column_names:
        eval_ds = encode_dataset(eval_ds, tokenizer, cfg.data.max_length, False, cfg.data.on_invalid)
    for which, ds in (("train", train_ds), ("eval", eval_ds)):
        if ds is not None:  # prompts whose question was cut to data.max_length, records dropped as unencodable
            counts[f"truncated_{which}"] = int(sum(ds["truncated"])) if "truncated" in ds.column_names else 0
            counts[f"skipped_{which}"] = counts[f"n_{which}_examples"] - len(ds)
            _check_fits_budget(ds, cfg.train.token_budget, "a training" if which == "train" else "an evaluation")
    if len(train_ds) == 0:
        raise ValueError("no training examples left (all skipped?); check data.max_length and the data")
    n_batches = len(token_budget_batches(train_ds["length"], cfg.train.token_budget, cfg.train.max_batch_size))
    n_batches = math.ceil(n_batches / int(os.environ.get("WORLD_SIZE", 1)))  # each process takes every W-th batch
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * n_batches)
    args = training_arguments(cfg, output_dir, total_steps, on_cuda, eval_ds is not None)
    clock = ThroughputCallback()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = AnswerOnlyTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        callbacks=[clock, *(callbacks or [])],
        token_budget=cfg.train.token_budget, max_batch_size=cfg.train.max_batch_size, pad_token_id=pad,
    )
    clock.seen = trainer.seen
    checkpoint = last_checkpoint(output_dir) if resume else None
    start_step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"] if checkpoint else 0
    memory = PeakMemory("cuda" if on_cuda else "cpu").start()
    start = time.perf_counter()
    try:  # evaluation and scoring afterwards run eager (no second compile for inference), with peft's copy
        with compiled_layers(model, cfg.train.compile), lora_input_float32(model, cfg, on_cuda):
            output = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.finite.check(output_dir)
    finally:
        release_optimizer_overrides(model)
        # accelerate left its autocast + fp32-output wrapper on model.forward: a later full-vocabulary forward
        # (harness-style scoring, generation) would copy every logit to float32
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
    wall = time.perf_counter() - start
    adapter_dir = output_dir / "adapter"
    save_error = None
    try:
        trainer.save_model(str(adapter_dir))
    except Exception as err:  # noqa: BLE001 - FSDP state-dict gathering: keep the measured run, say what failed
        if not getattr(trainer, "is_fsdp_enabled", False):
            raise
        save_error = f"{type(err).__name__}: {err}"
    steps = max(clock.step_seconds, 1e-9)
    history = loss_history(trainer.state.log_history)
    metrics = {
        "global_step": trainer.state.global_step, "resumed_from": checkpoint, **counts,
        "train_loss": run_train_loss(history, start_step, output.training_loss, trainer.state.global_step),
        "wall_seconds": wall, "step_seconds": clock.step_seconds,
        "real_tokens": trainer.seen["tokens"], "examples": trainer.seen["examples"],
        "real_tokens_per_s": trainer.seen["tokens"] / steps, "examples_per_s": trainer.seen["examples"] / steps,
        **clock.steady(), "optimizer": getattr(args.optim, "value", args.optim), "device": str(args.device),
        **memory.read(), **({"adapter_save_error": save_error} if save_error else {}),
    }
    if cfg.train.compile and metrics["warmup_seconds"] is not None and trainer.is_world_process_zero():
        print(f"[train] train.compile: the first steps took {metrics['warmup_seconds']:.1f} s more than steady "
              f"steps (compilation and warm-up), then {metrics['steady_real_tokens_per_s']:,.0f} real tokens/s")
    result = TrainResult(str(adapter_dir), history, metrics)
    if trainer.is_world_process_zero():
        (output_dir / "train_result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    return result
