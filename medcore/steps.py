"""What the Trainer calls around each training step: token-budget batches and their real-token counts, the epoch
hand-off to the sampler and the option orders, the finite-loss guard, the step clock, and the last complete
checkpoint. :mod:`medcore.train` puts them together."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainerCallback

from medcore.prompts import token_budget_batches

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss (or a gradient) became NaN or infinite; the message names the step and the last checkpoint."""


class TokenBudgetBatchSampler:
    """Batches of indices from prompts.token_budget_batches; the batch order is reshuffled per epoch."""

    def __init__(self, lengths: list[int], token_budget: int, max_batch_size: int, shuffle: bool, seed: int = 0):
        self.batches = token_budget_batches(lengths, token_budget, max_batch_size)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(len(self.batches)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        return (self.batches[i] for i in order)

    def __len__(self) -> int:
        return len(self.batches)


class EpochCallback(TrainerCallback):
    """Tells the batch sampler its epoch before each epoch's iterator is made, also when resuming mid-epoch.

    `trainer` holds ``train_sampler`` (a :class:`TokenBudgetBatchSampler` or None) and ``train_dataset``. Some
    transformers versions cannot reach a batch sampler through accelerate's wrappers; this does not depend on it.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int((state.epoch or 0) + 1e-6)  # state.epoch: 1.25 resumes epoch 1
        if self.trainer.train_sampler is not None:
            self.trainer.train_sampler.set_epoch(epoch)
        if hasattr(self.trainer.train_dataset, "set_epoch"):  # option_order.ShuffledOptions: this epoch's orders
            self.trainer.train_dataset.set_epoch(epoch)


def _last_good(output_dir: str | Path) -> str:
    found = last_checkpoint(output_dir)
    return f"the last checkpoint, {found}, is from before it" if found else "no checkpoint was written before it"


REAL_TOKENS = "n_real_tokens"


@dataclass
class RealTokenCounts:
    """A collator that also returns the batch's non-padding token count as a Python int (under ``REAL_TOKENS``),
    counted on the CPU before the batch moves to the device."""

    collate: Callable

    def __call__(self, features) -> dict[str, Any]:
        batch = self.collate(features)
        batch[REAL_TOKENS] = int(batch["attention_mask"].sum())
        return batch


class FiniteGuard(TrainerCallback):
    """Stops training at the first NaN or infinite loss or gradient, naming its step, before anything is saved.

    Every step folds "is the loss finite" and "is every gradient entry finite" into device flags without reading
    them: a read waits for the GPU, and one such wait per step leaves it idle while the next step is launched.
    The flags are read only where the Trainer is about to log, evaluate, save or stop, and again before the adapter
    is saved, so no checkpoint or adapter ever holds weights a bad step reached; the weights in memory may have
    taken the bad step and the steps up to the next read. The largest gradient entry (a max-norm) is checked, not
    a 2-norm, which huge finite entries could overflow.
    """

    def __init__(self):
        self.first_bad: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # kind -> (first bad step or -1, value)

    def note(self, kind: str, value: torch.Tensor, step: int) -> None:
        value = value.float()
        step_t, seen = self.first_bad.get(kind) or (torch.full((), -1, device=value.device), value.new_zeros(()))
        new = ~torch.isfinite(value) & (step_t < 0)
        self.first_bad[kind] = torch.where(new, step, step_t), torch.where(new, value, seen)

    def check(self, output_dir: str | Path) -> None:
        found = [(int(step), kind, float(value)) for kind, (step, value) in self.first_bad.items()]
        bad = sorted((step, kind != "loss", kind, value) for step, kind, value in found if step >= 0)
        if not bad:
            return
        step, _, kind, value = bad[0]
        what = f"training loss is {value}" if kind == "loss" else "a gradient is NaN or infinite"
        raise NonFiniteLossError(f"{what} at step {step}; {_last_good(output_dir)}. "
                                 "Lower train.learning_rate or check the data")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # FSDP: this rank's shard
                 for p in (model.parameters() if model is not None else []) if p.grad is not None]
        if grads:
            total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: fused over every tensor
            largest = total(grads, float("inf")) if total else torch.stack([g.abs().amax() for g in grads]).amax()
            self.note("gradient", largest, state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.check(args.output_dir)


class ThroughputCallback(TrainerCallback):
    """Times the training steps only (evaluation and checkpointing fall outside on_step_begin/on_step_end).

    With `seen` (the trainer's token counter) it also keeps each step's tokens, for a steady-state rate that leaves
    out the first steps (CUDA kernels chosen and allocator pools grown), and the device memory held when the first
    step begins (the model as wrapped for training: whole under DDP, a shard under FSDP).
    """

    def __init__(self, seen: dict | None = None, skip: int = 3):
        self.step_seconds, self._start = 0.0, None
        self.seen, self.skip, self.steps = seen, skip, []
        self.resident_memory_bytes = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.resident_memory_bytes is None and torch.cuda.is_available() and torch.cuda.is_initialized():
            self.resident_memory_bytes = torch.cuda.memory_allocated()
        self._tokens = self.seen["tokens"] if self.seen is not None else 0
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            seconds = time.perf_counter() - self._start
            self.step_seconds += seconds
            self.steps.append((seconds, (self.seen["tokens"] if self.seen is not None else 0) - self._tokens))

    def steady(self) -> dict[str, Any]:
        """Real tokens/s over the steps after the first ``min(skip, steps // 4)`` (None if there are none), and
        ``warmup_seconds``: how much longer those first steps took than steady steps of their tokens would have
        (compilation, kernel choice, allocator growth; None without steps on both sides)."""
        first = min(self.skip, len(self.steps) // 4)
        kept = self.steps[first:]
        seconds = sum(s for s, _ in kept)
        rate = sum(t for _, t in kept) / seconds if kept and seconds > 0 and self.seen is not None else None
        warmup = (sum(s for s, _ in self.steps[:first]) - sum(t for _, t in self.steps[:first]) / rate
                  if rate and first else None)
        return {"steady_steps": len(kept), "steady_real_tokens_per_s": rate, "warmup_seconds": warmup,
                "resident_memory_bytes": self.resident_memory_bytes}


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` in `output_dir`, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one was cut short (a run
    killed while saving); resuming from it would fail or, worse, load half a state. Such folders are skipped.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in output_dir.iterdir()
                   if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s (no readable trainer_state.json)", path)
    return None
