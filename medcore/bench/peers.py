"""The peers and clocks of `python -m medcore bench`: the tutorial training loop (padded batches, the model's own
loss), the timing of harness-style scoring (``medcore.harness_reference.harness_loglikelihood_choices``, four
sequences per question), adapter save/restore, the matmul ceiling and FLOP/MFU accounting, peak memory and
timed scoring passes. The medcore rows themselves call the product (``medcore.train.train``,
``medcore.evaluate.score_choices``); ``medcore.bench.command`` runs everything and reports."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medcore.measure import PeakMemory
from medcore.models import describe_model
from medcore.prompts import IGNORE_INDEX, LETTERS, Collator, answer_token_ids, encode_example


def free_memory() -> None:
    """:func:`medcore.flows.workflows.free_memory`, imported when first needed: importing ``workflows`` loads
    transformers, peft and datasets, which `python -m medcore bench --help` should not wait for."""
    from medcore.flows.workflows import free_memory as free

    free()


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


# ---- training batches ----------------------------------------------------------------------------------------

def encode_training_examples(records: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    """Answer-only training examples (``prompts.encode_example``), at most `max_length` tokens each."""
    letters = answer_token_ids(tokenizer)
    return [encode_example(r, tokenizer, max_length, letters) for r in records]


def _pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    extra = length - batch["input_ids"].shape[1]
    if extra < 0:
        raise ValueError(f"a row of {batch['input_ids'].shape[1]} tokens does not fit the pad length {length}")
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) for k, v in batch.items()}


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


def distinct_shapes(batches: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The first batch of each (rows, length) shape, in order: one untimed step per shape warms the CUDA
    kernels' and the caching allocator's state for every shape the timed steps will see."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for b in batches:
        shape = tuple(b["input_ids"].shape)
        if shape not in seen:
            seen.add(shape)
            out.append(b)
    return out


def medcore_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from medcore.train import answer_only_loss

    return answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def baseline_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr)
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr)
    raise ValueError(f"optimizer {name!r}: use adamw_torch or paged_adamw_8bit")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _trainer_step(model, loss_fn: Callable, optimizer: str, lr: float, device: torch.device,
                  adapter_state: dict[str, torch.Tensor] | None = None):
    """One training step of a recipe (forward under bf16 autocast on CUDA, backward, optimizer step) with its own
    fresh optimizer (released with the step function); the adapter starts from `adapter_state`."""
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
    return step


def time_training(model, warm: Sequence[dict], timed: Sequence[dict], loss_fn: Callable, optimizer: str, lr: float,
                  device: torch.device, adapter_state: dict[str, torch.Tensor] | None = None,
                  warm_shapes: bool = False) -> dict[str, Any]:
    """Warm-up steps, then timed steps (forward, backward, optimizer step) of one recipe; batches already on
    `device`. With `warm_shapes` the warm-up also steps once per batch shape of `timed` (:func:`distinct_shapes`).
    The adapter starts from `adapter_state` and every recipe gets a fresh optimizer."""
    step = _trainer_step(model, loss_fn, optimizer, lr, device, adapter_state)
    warm = list(warm) + (distinct_shapes(timed) if warm_shapes else [])
    warm_s = _clock(lambda: [step(b) for b in warm], device)[1]
    with PeakMemory(device) as mem:
        losses, seconds = _clock(lambda: [step(b) for b in timed], device)
    losses = [float(x) for x in losses]
    del step
    free_memory()
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
            a = float(medcore_loss(model, to_device(Collator(pad_id)(list(examples)), device)))
            padded = baseline_batches(examples, len(examples), pad_length, pad_id)[0]
            b = float(baseline_loss(model, to_device(padded, device)))
    finally:
        model.train(was_training)
    return {"medcore_loss": a, "baseline_loss": b, "abs_diff": abs(a - b), "rows": len(examples)}


# ---- scoring ---------------------------------------------------------------------------------------------------

def _clock(fn: Callable, device: torch.device) -> tuple[Any, float]:
    """`fn()` and its seconds, CUDA synchronised at the end (the caller syncs before, where it must)."""
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _timed_pass(fn: Callable, device: torch.device) -> tuple[Any, float, PeakMemory]:
    """`fn()` timed (CUDA synchronised on both sides) with its peak memory; memory is freed afterwards."""
    _sync(device)
    with PeakMemory(device) as mem:
        out, seconds = _clock(fn, device)
    free_memory()
    return out, seconds, mem


def _cold_then_warm(fn: Callable, device: torch.device) -> tuple[Any, float, float, PeakMemory]:
    """`fn` timed twice: the first pass (every shape new) and a second, warm one (its output and peak memory)."""
    cold = _timed_pass(fn, device)[1]
    out, seconds, mem = _timed_pass(fn, device)
    return out, cold, seconds, mem


def time_scoring(model, tokenizer, records: Sequence[dict], batch_size: int, device: torch.device,
                 autocast: bool = False) -> dict[str, Any]:
    """Both scorers on the same questions, each timed twice: a first pass (``cold_seconds``: every batch shape
    new to the scorer, as when a split is scored once) and a second one (``seconds``: warm, the steady state).
    Their agreement on the chosen letter, from the warm passes. `autocast`: both under bf16 autocast."""
    from medcore.evaluate import score_choices
    from medcore.harness_reference import harness_loglikelihood_choices

    records = list(records)
    n = len(records)
    one_pass = lambda: score_choices(model, tokenizer, records, batch_size=batch_size, progress=False,  # noqa: E731
                                     autocast=autocast)
    harness = lambda: harness_loglikelihood_choices(model, tokenizer, records, batch_size=batch_size,  # noqa: E731
                                                    autocast=autocast, share_forwards=False)
    one, one_cold, one_s, mem_one = _cold_then_warm(one_pass, device)
    ref, ref_cold, ref_s, mem_h = _cold_then_warm(harness, device)
    logprob = one[[f"logprob_{x}" for x in LETTERS]].to_numpy()
    keep = ~one["truncated"].to_numpy()
    ref_loglik = ref[[f"loglik_{x}" for x in LETTERS]].to_numpy()
    agree = one["pred"].to_numpy() == ref["pred"].to_numpy()
    rows = [
        {"scorer": "medcore one-pass (score_choices)", "questions": n, "forward_sequences": n,
         "real_tokens": int(one["prompt_tokens"].sum()), "seconds": one_s, "cold_seconds": one_cold,
         "questions_per_s": n / one_s, "peak_memory_bytes": int(mem_one.peak), "peak_memory_kind": mem_one.kind},
        {"scorer": "harness-style (4 requests/question)", "questions": n,
         "forward_sequences": ref.attrs["forward_sequences"], "real_tokens": ref.attrs["real_tokens"], "seconds": ref_s, "cold_seconds": ref_cold, "questions_per_s": n / ref_s,
         "peak_memory_bytes": int(mem_h.peak), "peak_memory_kind": mem_h.kind},
    ]
    for row in rows:
        row["real_tokens_per_s"] = row["real_tokens"] / row["seconds"]
        row["autocast"] = autocast
    return {"rows": rows, "batch_size": batch_size, "autocast": autocast, "pred": (one["pred"].to_numpy(), logprob),
            "agreement": float(agree[keep].mean()) if keep.any() else None,
            "compared": int(keep.sum()), "truncated": int((~keep).sum()),
            "max_abs_logprob_diff": float(np.abs(logprob[keep] - ref_loglik[keep]).max()) if keep.any() else None,
            "accuracy": float(one["correct"].mean()), "mean_prompt_tokens": float(one["prompt_tokens"].mean())}


@contextlib.contextmanager
def cudnn_attention(enabled: bool | None):
    """SDPA's cuDNN backend on or off inside the block (None: left as it is). cuDNN builds an execution plan
    for every new (batch, length) shape; the other backends (flash, memory-efficient) do not."""
    if enabled is None or not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def time_one_pass(model, tokenizer, records: Sequence[dict], batch_size: int, device: torch.device,
                  cold: bool = False, autocast: bool = False, cudnn: bool | None = None,
                  reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """medcore's one-pass scorer alone at one batch size: seconds, questions/s and peak memory of a pass after
    one untimed batch; with `cold`, the first pass over the questions is timed too (``cold_seconds``: every
    batch shape new to the process), then a second, warm one. `reference`: the chosen letters and log-probabilities
    of another scoring of the same questions, to compare with."""
    from medcore.evaluate import score_choices

    records = list(records)

    def one_pass():
        return score_choices(model, tokenizer, records, batch_size=batch_size, progress=False, autocast=autocast)
    out: dict[str, Any] = {"score_batch_size": batch_size, "questions": len(records), "autocast": autocast,
                           "cudnn_attention": cudnn}
    with cudnn_attention(cudnn):
        if cold:
            one, out["cold_seconds"], seconds, mem = _cold_then_warm(one_pass, device)
        else:
            score_choices(model, tokenizer, records[:batch_size], batch_size=batch_size, progress=False,
                          autocast=autocast)
            one, seconds, mem = _timed_pass(one_pass, device)
    out.update({"seconds": seconds, "questions_per_s": len(records) / seconds,
                "real_tokens": int(one["prompt_tokens"].sum()),
                "real_tokens_per_s": float(one["prompt_tokens"].sum()) / seconds, "peak_memory_bytes": int(mem.peak),
                "peak_memory_kind": mem.kind, "accuracy": float(one["correct"].mean())})
    if reference is not None:  # (chosen letters, n x 4 log-probabilities) of the base scoring
        logprob = one[[f"logprob_{x}" for x in LETTERS]].to_numpy()
        out["agreement_with_base_scoring"] = float((one["pred"].to_numpy() == reference[0]).mean())
        out["max_abs_logprob_diff_vs_base"] = float(np.abs(logprob - reference[1]).max())
    return out
