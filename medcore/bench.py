"""`python -m medcore bench`: medcore's training and scoring paths against the usual baselines, in one run.

Both sides run on the same quantized model with the same adapter (NF4 + double quantization, bf16 compute,
LoRA r=16 on every linear layer; ``--precision bf16`` for an unquantized base) and the same MedMCQA questions.

Training (a plain loop: forward, backward, optimizer step, after ``--warmup`` untimed steps and one untimed pass over
the timed batches (``--no-warm-shapes`` leaves that out); *not* the Trainer,
so that both recipes are timed the same way and data loading stays outside the clock. The pass over the timed
batches is there because token-budget batches come in many shapes and, on the H200, a step of a shape not seen
before was measured slower: the medcore row of ``bench-gemma-2b-nvidia-h200-levers`` (3 warm-up steps only) gave
3,221 real tokens/s and the same recipe re-run unchanged right after it 7,376 and 6,986. ``--with-trainer``
also times :func:`medcore.train.train` on the same examples as a check that the loop represents it):

* **medcore**: the examples of ``--steps`` baseline batches (the *same* examples, so the same real tokens), in
  token-budget batches (``prompts.token_budget_batches``: length-sorted, ``--token-budget`` tokens per batch
  padding included, at most ``--max-batch-size`` rows), the LM head at the labelled positions only
  (``train.answer_only_loss``); optional gradient checkpointing. Its number of steps is however many budget
  batches those examples fill.
* **baseline**, as the usual QLoRA tutorials write it: ``--steps`` batches of ``--baseline-batch-size`` (16)
  examples padded to ``--pad-length`` (256), loss from ``model(input_ids, attention_mask, labels).loss`` (the
  LM head and the cross-entropy over every position). Labels are the same answer-only labels, so both minimise
  the same objective (``objective_check`` in the record compares the two losses on one batch). Tutorials also
  call peft's ``prepare_model_for_kbit_training``, which casts the frozen embedding to fp32 (about 2 GB more for
  Gemma-2B); that is *not* reproduced here, which flatters the baseline's memory.

Both use the same optimizer (``--optimizer auto``: paged 8-bit AdamW on CUDA, AdamW on CPU, as ``train.py``),
the same learning rate, bf16 autocast on CUDA, and start from the same adapter weights. Reported: real
(non-padding) tokens/s, examples/s, padding share, peak memory (CUDA allocator peak during the timed steps; on
CPU the peak resident set size sampled during them).

Scoring, on ``--n-questions`` questions (default all on CUDA, 64 on CPU), both after one untimed batch:

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

``--levers attn,compile,optim,budget,ckpt`` (or ``all``) reruns the medcore training recipe once per variant,
changing one setting at a time (attention sdpa/eager, ``torch.compile`` of the decoder body, the other optimizer,
token budgets 4096/8192/16384 with the row cap scaled alongside, gradient checkpointing toggled); each is a row.

Prints a table with ratios (medcore / baseline), the fraction of the ceiling, and whether each target of issue
#7 is met, and writes a run record (``results.write_run_record``) to ``--out``/``bench-<model>-<device>``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import re
import resource
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medcore.prompts import IGNORE_INDEX, LETTERS, Collator

ROOT = Path(__file__).resolve().parent.parent
SCORE_TARGET_QUESTIONS = 4183  # the MedMCQA validation split
LEVERS = ("attn", "compile", "optim", "budget", "ckpt", "repeat")  # repeat: the base recipe again (drift check)
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
    gradient_checkpointing: bool = False
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
    p.add_argument("--optimizer", default=d.optimizer, choices=["auto", "adamw_torch", "paged_adamw_8bit"])
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--levers", default="", help=f"comma list of {','.join(LEVERS)} or 'all'")
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
    values = {k: v for k, v in vars(a).items() if k != "levers"}
    return BenchConfig(levers=levers, **values)


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


# ---- ceiling and FLOP accounting -----------------------------------------------------------------------------

def train_flops_per_token(non_embedding_params: int) -> float:
    """Model FLOPs per trained real token: 6 x non-embedding parameters (forward 2N + backward 4N)."""
    return 6.0 * non_embedding_params


def score_flops_per_token(non_embedding_params: int) -> float:
    """Model FLOPs per scored real token: 2 x non-embedding parameters (one forward)."""
    return 2.0 * non_embedding_params


def mfu(tokens_per_s: float, flops_per_token: float, ceiling_flops: float) -> float:
    """Achieved model FLOP/s as a fraction of the measured matmul rate."""
    return tokens_per_s * flops_per_token / ceiling_flops if ceiling_flops > 0 else float("nan")


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Logical parameters (4-bit weights counted by their shape) minus the input embedding (tied to the head)."""
    from medcore.models import describe_model

    return int(describe_model(model)["params_non_embedding"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, size: int, reps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """bf16 FLOP/s of a size^3 matmul (CUDA events on GPU, a wall clock on CPU), the mean of `reps` products."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        seconds = time.perf_counter() - t0
    return {"size": size, "reps": reps, "seconds": seconds, "flops": 2.0 * size ** 3 * reps / seconds,
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter"}


# ---- peak memory ---------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory inside a ``with`` block: the CUDA allocator's peak, or on CPU the resident set size
    sampled every 5 ms from /proc/self/statm (ru_maxrss, if /proc is missing, covers the whole process)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_sampled"

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/statm").is_file():
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.kind = "process_peak_rss"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "rss_sampled":
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- training batches ----------------------------------------------------------------------------------------

def encode_training_examples(records: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    """Answer-only training examples (``prompts.encode_example``), at most `max_length` tokens each."""
    from medcore.prompts import answer_token_ids, encode_example

    letters = answer_token_ids(tokenizer)
    return [encode_example(r, tokenizer, max_length, letters) for r in records]


def _pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"a row of {batch['input_ids'].shape[1]} tokens does not fit the pad length {length}")
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


def medcore_batches(examples: Sequence[dict], token_budget: int, max_batch_size: int, pad_id: int,
                    seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Token-budget batches (length-sorted, padded to their longest row), batch order shuffled with `seed`."""
    from medcore.prompts import token_budget_batches

    lengths = [e["length"] for e in examples]
    groups = token_budget_batches(lengths, token_budget, max_batch_size, shuffle=True, seed=seed)
    collate = Collator(pad_id)
    return [collate([examples[i] for i in g]) for g in groups]


def baseline_batches(examples: Sequence[dict], batch_size: int, pad_length: int, pad_id: int
                     ) -> list[dict[str, torch.Tensor]]:
    """Fixed-size batches in the given order, every row padded to `pad_length` (the tutorials' recipe)."""
    collate = Collator(pad_id)
    return [_pad_to(collate(examples[i:i + batch_size]), pad_length, pad_id)
            for i in range(0, len(examples), batch_size)]


def batch_tokens(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, int]:
    """Real (attention-mask) tokens, padded positions, examples and labelled targets of some batches."""
    return {"real_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
            "padded_tokens": int(sum(b["input_ids"].numel() for b in batches)),
            "examples": int(sum(b["input_ids"].shape[0] for b in batches)),
            "labelled": int(sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches))}


def medcore_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from medcore.train import answer_only_loss

    return answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def baseline_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def resolve_optimizer(name: str, device: torch.device) -> str:
    from medcore.train import resolve_optimizer as resolve  # one rule for "auto", the trainer's

    return resolve(name, device.type == "cuda")


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr)
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr)
    raise ValueError(f"optimizer {name!r}: use adamw_torch or paged_adamw_8bit")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def time_training(model, warm: Sequence[dict], timed: Sequence[dict], loss_fn: Callable, optimizer: str, lr: float,
                  device: torch.device, adapter_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Warm-up steps, then timed steps (forward, backward, optimizer step) of one recipe; batches already on
    `device`. The adapter starts from `adapter_state` and every recipe gets a fresh optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    if adapter_state is not None:
        restore_adapter(model, adapter_state)
    opt = make_optimizer(optimizer, params, lr)
    model.train()

    def step(batch):
        with _autocast(device):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    for b in warm:
        step(b)
    _sync(device)
    warm_s = time.perf_counter() - t0
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        losses = [step(b) for b in timed]
        _sync(device)
        seconds = time.perf_counter() - t0
    losses = [float(x) for x in losses]
    del opt
    _free(device)
    counts = batch_tokens(timed)
    return {"steps": len(timed), "warmup_steps": len(warm), "warmup_seconds": warm_s, "seconds": seconds,
            **counts, "real_tokens_per_s": counts["real_tokens"] / seconds,
            "examples_per_s": counts["examples"] / seconds, "steps_per_s": len(timed) / seconds,
            "padding_share": 1 - counts["real_tokens"] / max(counts["padded_tokens"], 1),
            "peak_memory_bytes": int(mem.peak), "peak_memory_kind": mem.kind,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "optimizer": optimizer}


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_adapter(model, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def objective_check(model, examples: Sequence[dict], pad_length: int, pad_id: int, device: torch.device
                    ) -> dict[str, float]:
    """Both recipes' losses on the same rows (dropout off, no gradients): medcore's batch padded to its longest
    row with the head at the answer, the baseline's padded to `pad_length` with the head everywhere."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(device):
            a = float(medcore_loss(model, _to(Collator(pad_id)(list(examples)), device)))
            padded = baseline_batches(examples, len(examples), pad_length, pad_id)[0]
            b = float(baseline_loss(model, _to(padded, device)))
    finally:
        model.train(was_training)
    return {"medcore_loss": a, "baseline_loss": b, "abs_diff": abs(a - b), "rows": len(examples)}


# ---- scoring ---------------------------------------------------------------------------------------------------

def harness_requests(tokenizer, records: Sequence[dict]) -> list[tuple[int, int, list[int], list[int]]]:
    """(question, letter, context ids, continuation ids) for the harness's four requests per question."""
    from medcore.evaluate import harness_encode_pair
    from medcore.prompts import format_prompt

    out = []
    for q, rec in enumerate(records):
        context = format_prompt(rec["question"], rec["options"])
        for j, letter in enumerate(LETTERS):
            ctx, cont = harness_encode_pair(tokenizer, context, " " + letter)
            out.append((q, j, ctx, cont))
    return out


def harness_style_scores(model, tokenizer, records: Sequence[dict], batch_size: int) -> dict[str, Any]:
    """Log-likelihoods (n x 4) the harness way: every request a sequence, batches of `batch_size` requests
    sorted by length (longest first, as the harness), right-padded, the model's own forward (head at every
    position), log-softmax over every real position, continuation log-probabilities summed."""
    requests = harness_requests(tokenizer, records)
    inputs = [(ctx + cont)[:-1] for _, _, ctx, cont in requests]
    order = sorted(range(len(requests)), key=lambda i: (-len(inputs[i]), i))
    device = model.get_input_embeddings().weight.device
    loglik = np.zeros((len(records), 4))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(inputs[i]) for i in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    ids[row, :len(inputs[i])] = torch.tensor(inputs[i])
                logits = model(input_ids=ids.to(device), use_cache=False).logits  # no mask: right padding, causal
                sums = []
                for row, i in enumerate(chunk):
                    _, _, ctx, cont = requests[i]
                    logp = torch.log_softmax(logits[row, :len(inputs[i])].float(), dim=-1)
                    pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=logp.device)
                    sums.append(logp[pos, torch.tensor(cont, device=logp.device)].double().sum())
                # one transfer per batch (the harness syncs once per request: this is kinder to the baseline)
                for i, value in zip(chunk, torch.stack(sums).cpu().tolist()):
                    loglik[requests[i][0], requests[i][1]] = value
                del logits, sums
    finally:
        model.train(was_training)
    return {"loglik": loglik, "pred": loglik.argmax(axis=1), "requests": len(requests),
            "real_tokens": int(sum(len(x) for x in inputs))}


def time_scoring(model, tokenizer, records: Sequence[dict], batch_size: int, device: torch.device) -> dict[str, Any]:
    """Both scorers on the same questions after one untimed batch each; their agreement on the chosen letter."""
    from medcore.evaluate import score_choices

    records = list(records)
    n = len(records)
    score_choices(model, tokenizer, records[:batch_size], batch_size=batch_size, progress=False)
    _sync(device)
    with PeakMemory(device) as mem_one:
        t0 = time.perf_counter()
        one = score_choices(model, tokenizer, records, batch_size=batch_size, progress=False)
        _sync(device)
        one_s = time.perf_counter() - t0
    _free(device)
    harness_style_scores(model, tokenizer, records[:max(1, batch_size // 4)], batch_size)
    _sync(device)
    with PeakMemory(device) as mem_h:
        t0 = time.perf_counter()
        ref = harness_style_scores(model, tokenizer, records, batch_size)
        _sync(device)
        ref_s = time.perf_counter() - t0
    _free(device)
    logprob = one[[f"logprob_{x}" for x in LETTERS]].to_numpy()
    keep = ~one["truncated"].to_numpy()
    agree = one["pred"].to_numpy() == ref["pred"]
    rows = [
        {"scorer": "medcore one-pass (score_choices)", "questions": n, "forward_sequences": n,
         "real_tokens": int(one["prompt_tokens"].sum()), "seconds": one_s, "questions_per_s": n / one_s,
         "peak_memory_bytes": int(mem_one.peak), "peak_memory_kind": mem_one.kind},
        {"scorer": "harness-style (4 requests/question)", "questions": n, "forward_sequences": ref["requests"],
         "real_tokens": ref["real_tokens"], "seconds": ref_s, "questions_per_s": n / ref_s,
         "peak_memory_bytes": int(mem_h.peak), "peak_memory_kind": mem_h.kind},
    ]
    for row in rows:
        row["real_tokens_per_s"] = row["real_tokens"] / row["seconds"]
    return {"rows": rows, "batch_size": batch_size, "agreement": float(agree[keep].mean()) if keep.any() else None,
            "compared": int(keep.sum()), "truncated": int((~keep).sum()),
            "max_abs_logprob_diff": float(np.abs(logprob[keep] - ref["loglik"][keep]).max()) if keep.any() else None,
            "accuracy": float(one["correct"].mean()), "mean_prompt_tokens": float(one["prompt_tokens"].mean())}


# ---- levers ----------------------------------------------------------------------------------------------------

def _causal(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attn_implementation(model) -> str:
    return str(getattr(_causal(model).config, "_attn_implementation", None))


def set_attn_implementation(model, impl: str) -> None:
    causal = _causal(model)
    if hasattr(causal, "set_attn_implementation"):
        causal.set_attn_implementation(impl)
    else:  # older transformers: every module reads its config's field at call time
        for module in causal.modules():
            if hasattr(getattr(module, "config", None), "_attn_implementation"):
                module.config._attn_implementation = impl


def set_checkpointing(model, on: bool) -> None:
    """Non-reentrant gradient checkpointing on or off (transformers >= 5.24 calls it activation checkpointing)."""
    causal = _causal(model)
    if hasattr(causal, "activation_checkpointing_enable"):
        if on:
            causal.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            causal.activation_checkpointing_disable()
    elif on:
        causal.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        causal.gradient_checkpointing_disable()


def lever_variants(levers: Sequence[str], cfg: BenchConfig, optimizer: str, attn: str) -> list[dict[str, Any]]:
    """One dict per variant: the lever, a label, and the setting it changes from the base run."""
    out = []
    for lever in levers:
        if lever == "attn":
            other = "eager" if attn != "eager" else "sdpa"
            out.append({"lever": "attn", "variant": f"attention={other}", "attn": other})
        elif lever == "compile":
            out.append({"lever": "compile", "variant": "torch.compile(decoder body, dynamic=True)", "compile": True})
        elif lever == "optim":
            other = "paged_adamw_8bit" if optimizer == "adamw_torch" else "adamw_torch"
            out.append({"lever": "optim", "variant": f"optimizer={other}", "optimizer": other})
        elif lever == "budget":
            for budget in (4096, 8192, 16384):
                if budget != cfg.token_budget:
                    rows = max(1, round(cfg.max_batch_size * budget / cfg.token_budget))
                    out.append({"lever": "budget", "variant": f"token_budget={budget} (max rows {rows})",
                                "token_budget": budget, "max_batch_size": rows})
        elif lever == "repeat":  # nothing changed: how far a later measurement drifts from the first
            out.append({"lever": "repeat", "variant": "medcore recipe again, unchanged"})
        elif lever == "ckpt":
            on = not cfg.gradient_checkpointing
            out.append({"lever": "ckpt", "variant": f"gradient_checkpointing={'on' if on else 'off'}", "ckpt": on})
    return out


def run_lever(model, variant: dict, cfg: BenchConfig, examples: dict[str, list], optimizer: str, state,
              device: torch.device, pad_id: int) -> dict[str, Any]:
    """The medcore recipe with one setting changed; settings are put back whatever happens."""
    base_attn = attn_implementation(model)
    body = _causal(model).model
    try:
        if "attn" in variant:
            set_attn_implementation(model, variant["attn"])
        if variant.get("compile"):
            body.compile(dynamic=True)
        if "ckpt" in variant:
            set_checkpointing(model, variant["ckpt"])
        budget = variant.get("token_budget", cfg.token_budget)
        rows = variant.get("max_batch_size", cfg.max_batch_size)
        warm = [_to(b, device) for b in medcore_batches(examples["warm"], budget, rows, pad_id, cfg.seed)[:cfg.warmup]]
        timed = [_to(b, device) for b in medcore_batches(examples["timed"], budget, rows, pad_id, cfg.seed)]
        warm += timed if cfg.warm_all_shapes else []
        result = time_training(model, warm, timed, medcore_loss, variant.get("optimizer", optimizer),
                               cfg.learning_rate, device, state)
        return {**variant, **result, "error": None}
    except Exception as err:  # one failed lever (OOM, a compile error) must not lose the others
        return {**variant, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        if variant.get("compile"):
            body._compiled_call_impl = None
            torch._dynamo.reset()
        if "attn" in variant:
            set_attn_implementation(model, base_attn)
        if "ckpt" in variant:
            set_checkpointing(model, cfg.gradient_checkpointing)
        _free(device)


def run_trainer(model, tokenizer, cfg: BenchConfig, examples: list[dict]) -> dict[str, Any]:
    """medcore.train.train (the Trainer, its token-budget sampler and answer-only loss) for one epoch over the
    timed examples; its own throughput callback times the steps (the first step included)."""
    import datasets

    from medcore.config import RunConfig
    from medcore.train import train

    rc = RunConfig()
    rc.data.max_length = cfg.pad_length
    for key, value in dict(token_budget=cfg.token_budget, max_batch_size=cfg.max_batch_size, epochs=1.0,
                           gradient_checkpointing=cfg.gradient_checkpointing, optimizer=cfg.optimizer,
                           learning_rate=cfg.learning_rate, warmup_ratio=0.0, save_steps=10 ** 9,
                           eval_steps=10 ** 9, logging_steps=10 ** 9, seed=cfg.seed).items():
        setattr(rc.train, key, value)
    ds = datasets.Dataset.from_list([{k: e[k] for k in ("input_ids", "labels", "length")} for e in examples])
    with tempfile.TemporaryDirectory(prefix="medcore-bench-trainer-") as tmp:
        m = train(rc, model, tokenizer, ds, None, tmp).metrics
    return {"recipe": "medcore via train.train (Trainer)", "steps": m["global_step"], "seconds": m["step_seconds"],
            "real_tokens": m["real_tokens"], "examples": m["examples"], "real_tokens_per_s": m["real_tokens_per_s"],
            "examples_per_s": m["examples_per_s"], "peak_memory_bytes": m["peak_memory_bytes"],
            "peak_memory_kind": m["peak_memory_kind"], "optimizer": m["optimizer"]}


# ---- targets and report --------------------------------------------------------------------------------------

def targets(metrics: dict[str, Any], cond: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #7's targets, computed from the measured numbers; `conditions_match` says whether this run is
    under the targets' conditions (H200-class CUDA, Gemma-2B shape, NF4 + DQ + LoRA)."""
    train_rows = {r["recipe"]: r for r in metrics["training"]}
    med, base = train_rows["medcore"], train_rows["baseline"]
    one, harness = metrics["scoring"]
    general = cond["device_type"] == "cuda" and cond["model"] == "random:gemma-2b" and cond["precision"] == "nf4"
    mem_ok = general and cond["token_budget"] == 4096 and cond["gradient_checkpointing"]
    project = SCORE_TARGET_QUESTIONS / one["questions_per_s"]
    rows = [
        ("training real tokens/s, medcore / baseline", ">= 3x", med["real_tokens_per_s"] / base["real_tokens_per_s"],
         lambda v: v >= 3, "x", general),
        ("training fraction of the bf16 matmul ceiling (MFU)", ">= 35%", med["mfu"], lambda v: v >= 0.35, "%", general),
        (f"seconds to score {SCORE_TARGET_QUESTIONS:,} questions" +
         ("" if one["questions"] == SCORE_TARGET_QUESTIONS else f" (projected from {one['questions']})"),
         "<= 10 s", project, lambda v: v <= 10, "s", general),
        ("scoring questions/s, one-pass / harness-style", ">= 3.5x",
         one["questions_per_s"] / harness["questions_per_s"], lambda v: v >= 3.5, "x", general),
        ("QLoRA training peak memory at 4,096 tokens/batch with checkpointing", "<= 6 GB",
         med["peak_memory_bytes"] / 1e9, lambda v: v <= 6, "GB", mem_ok),
    ]
    return [{"target": name, "goal": goal, "measured": value, "unit": unit, "met": bool(test(value)),
             "conditions_match": match} for name, goal, value, test, unit, match in rows]


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
        ["seconds", _f(one["seconds"], "s"), _f(har["seconds"], "s"), _f(ratio(har["seconds"], one["seconds"]), "x")],
        ["questions/s", _f(one["questions_per_s"]), _f(har["questions_per_s"]),
         _f(ratio(one["questions_per_s"], har["questions_per_s"]), "x")],
        ["peak memory", _f(one["peak_memory_bytes"], "GB"), _f(har["peak_memory_bytes"], "GB"), ""],
        ["MFU (2N/token)", _f(one["mfu"], "%"), _f(har["mfu"], "%"), ""],
    ]
    s = m["scoring_check"]
    text += ["", f"scoring ({one['questions']} questions, batch {s['batch_size']}, timings include tokenization)",
             _table(["", "one-pass", "harness-style", "one-pass/harness"], sc_rows),
             f"  same choices on {_f(s['agreement'], '%')} of {s['compared']} questions (max |logprob diff| "
             f"{_f(s['max_abs_logprob_diff'])}); accuracy {_f(s['accuracy'], '%')}"]
    if m.get("levers"):
        lv = []
        for r in m["levers"]:
            if r.get("error"):
                lv.append([r["variant"], "failed: " + r["error"][:60], "", "", "", ""])
            else:
                lv.append([r["variant"], _f(r["real_tokens_per_s"]), _f(r["examples_per_s"]),
                           _f(r["peak_memory_bytes"], "GB"), _f(r["mfu"], "%"),
                           _f(ratio(r["real_tokens_per_s"], med["real_tokens_per_s"]), "x")])
        text += ["", "levers (medcore training recipe, one change each; base = the medcore row above)",
                 _table(["variant", "real tok/s", "ex/s", "peak", "MFU", "vs base"], lv)]
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


def run_bench(cfg: BenchConfig, write: bool = True) -> dict[str, Any]:
    """Measure everything, print the report, write the record (``write``); returns metrics + record path."""
    from medcore import lora, models, quantize
    from medcore.config import LoraConfig, QuantConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    optimizer = resolve_optimizer(cfg.optimizer, device)
    n_questions = cfg.n_questions if cfg.n_questions is not None else (None if device.type == "cuda" else 64)
    score_bs = cfg.score_batch_size or (64 if device.type == "cuda" else 16)
    matmul = matmul_rate(device, cfg.matmul_size or (8192 if device.type == "cuda" else 1024),
                         reps=10 if device.type == "cuda" else 3, warmup=3 if device.type == "cuda" else 1)
    print(f"[bench] bf16 {matmul['size']}^3 matmul: {_rate(matmul['flops'])}", flush=True)

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
        raise ValueError(f"{len(records)} questions from {source} cannot feed {cfg.steps} steps of "
                         f"{cfg.baseline_batch_size} plus warm-up ({n_timed + n_warm}); use fewer --steps/--warmup")
    encoded = encode_training_examples(records[:n_timed + n_warm], tokenizer, cfg.pad_length)
    examples = {"timed": encoded[:n_timed], "warm": encoded[n_timed:]}

    t0 = time.perf_counter()
    model = quantize.load_quantized(cfg.model, QuantConfig(cfg.precision, double_quant=True), device=device)
    load_s = time.perf_counter() - t0
    n_params = non_embedding_parameters(model)
    info = models.describe_model(model)
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
    med_warm = [_to(b, device) for b in medcore_batches(examples["warm"], cfg.token_budget, cfg.max_batch_size,
                                                       pad_id, cfg.seed)[:cfg.warmup]]
    med_timed = [_to(b, device) for b in medcore_batches(examples["timed"], cfg.token_budget, cfg.max_batch_size,
                                                        pad_id, cfg.seed)]
    base_warm = [_to(b, device) for b in baseline_batches(examples["warm"][:cfg.warmup * cfg.baseline_batch_size],
                                                         cfg.baseline_batch_size, cfg.pad_length, pad_id)]
    base_timed = [_to(b, device) for b in baseline_batches(examples["timed"], cfg.baseline_batch_size,
                                                          cfg.pad_length, pad_id)]
    if cfg.warm_all_shapes:  # token-budget batches differ in shape; the first step of each shape is slow on CUDA
        med_warm, base_warm = med_warm + med_timed, base_warm + base_timed
    training = []
    for name, warm, timed, loss_fn in (("medcore", med_warm, med_timed, medcore_loss),
                                       ("baseline", base_warm, base_timed, baseline_loss)):
        row = {"recipe": name, **time_training(model, warm, timed, loss_fn, optimizer, cfg.learning_rate, device,
                                               state)}
        training.append(row)
        print(f"[bench] training {name}: {row['real_tokens_per_s']:.1f} real tokens/s", flush=True)
    del med_warm, med_timed, base_warm, base_timed
    if cfg.with_trainer:
        restore_adapter(model, state)
        training.append(run_trainer(model, tokenizer, cfg, examples["timed"]))
    ftrain = train_flops_per_token(n_params)
    for row in training:
        row["mfu"] = mfu(row["real_tokens_per_s"], ftrain, matmul["flops"])
        row["model_tflops"] = row["real_tokens_per_s"] * ftrain / 1e12

    restore_adapter(model, state)
    score_records = records[:n_questions] if n_questions else records
    sc = time_scoring(model, tokenizer, score_records, score_bs, device)
    fscore = score_flops_per_token(n_params)
    for row in sc["rows"]:
        row["mfu"] = mfu(row["real_tokens_per_s"], fscore, matmul["flops"])
        row["model_tflops"] = row["real_tokens_per_s"] * fscore / 1e12
    print(f"[bench] scoring: {sc['rows'][0]['questions_per_s']:.1f} vs {sc['rows'][1]['questions_per_s']:.1f} q/s",
          flush=True)

    levers = []
    for variant in lever_variants(cfg.levers, cfg, optimizer, attn):
        row = run_lever(model, variant, cfg, examples, optimizer, state, device, pad_id)
        if not row.get("error"):
            row["mfu"] = mfu(row["real_tokens_per_s"], ftrain, matmul["flops"])
        levers.append(row)
        print(f"[bench] lever {row['variant']}: {row.get('real_tokens_per_s', row.get('error'))}", flush=True)

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
        "gradient_checkpointing": cfg.gradient_checkpointing, "optimizer": optimizer, "attn_implementation": attn,
        "learning_rate": cfg.learning_rate, "source": source, "n_questions_scored": len(score_records),
        "mean_prompt_tokens": sc["mean_prompt_tokens"],
        "mean_train_example_tokens": float(np.mean([e["length"] for e in examples["timed"]])),
        "matmul_size": matmul["size"], "torch_threads": torch.get_num_threads(), "load_seconds": load_s,
    }
    metrics = {
        "device": device_name, "model": cfg.model, "real_weights": conditions["real_weights"],
        "matmul_tflops": matmul["flops"] / 1e12,
        "train_speedup_real_tokens": training[0]["real_tokens_per_s"] / training[1]["real_tokens_per_s"],
        "train_mfu": training[0]["mfu"], "train_peak_memory_gb": training[0]["peak_memory_bytes"] / 1e9,
        "score_speedup": sc["rows"][0]["questions_per_s"] / sc["rows"][1]["questions_per_s"],
        "score_questions_per_s": sc["rows"][0]["questions_per_s"],
        "score_seconds_4183": SCORE_TARGET_QUESTIONS / sc["rows"][0]["questions_per_s"],
        "training": training, "scoring": sc["rows"],
        "scoring_check": {k: v for k, v in sc.items() if k != "rows"},
        "objective_check": check, "levers": levers, "matmul": matmul, "conditions": conditions,
    }
    metrics["targets"] = targets(metrics, conditions)
    print(format_report(metrics), flush=True)
    if write:
        from medcore.results import write_run_record

        run_id = cfg.run_id or f"bench-{_slug(cfg.model.partition(':')[2])}-{_slug(device_name)}"
        path = write_run_record(cfg.out, run_id, config=asdict(cfg), metrics=metrics,
                                extra={"real_weights": conditions["real_weights"], "model_source": cfg.model,
                                       "kind": "bench"}, overwrite=True)
        metrics["record"] = str(path)
        print(f"[bench] record written to {path}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_bench(parse_args(argv))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
