"""What scoring costs: batch-1 latency, throughput per batch size and peak memory of the forward pass that
:func:`medcore.evaluate.score_choices` runs, with the conditions they were measured under (device, dtypes, model,
threads, library versions)."""
from __future__ import annotations

import statistics
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import transformers

from medcore.logprobs import input_device, length_sorted_batches, letter_logprobs, pad_token_id, scoring_mode
from medcore.measure import PeakMemory, Timer
from medcore.models import causal_lm, describe_model
from medcore.prompts import answer_token_ids, encode_for_scoring

try:
    import psutil
except ImportError:  # psutil is optional on GPU machines
    psutil = None


def _rss() -> int | None:
    return psutil.Process().memory_info().rss if psutil is not None else None


def _conditions(model, encoded: list[dict]) -> dict[str, Any]:
    device = input_device(model)
    dtypes = pd.Series([str(p.dtype).removeprefix("torch.") for p in model.parameters()]).value_counts()
    info = describe_model(causal_lm(model))
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "dtype": str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "param_dtypes": dtypes.to_dict(), "quantization": info.get("quantization"),
            "model_source": info.get("source"), "real_weights": info.get("real_weights"),
            "n_questions": len(encoded), "mean_prompt_tokens": float(np.mean([e["length"] for e in encoded])),
            "torch_threads": torch.get_num_threads(), "rss_bytes_after": _rss(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def measure_cost(model, tokenizer, records: Iterable[dict], batch_sizes: Sequence[int] = (1, 16),
                 n_latency: int = 20, warmup: int = 10, max_length: int = 512) -> dict[str, Any]:
    """Batch-1 latency, throughput per batch size and peak memory of :func:`medcore.evaluate.score_choices`'s
    forward pass.

    Latency: ``n_latency`` questions one at a time after ``warmup`` untimed ones (median and p90, ms).
    Throughput: all ``records`` in length-sorted batches of each size after one untimed batch (questions/s).
    Timings synchronize CUDA. Peak memory: :class:`medcore.measure.PeakMemory` over the timed passes (the CUDA
    allocator's peak on GPU, the process's peak resident set on CPU). Answer keys not needed.
    """
    records = list(records)
    letter_ids, pad_id = answer_token_ids(tokenizer), pad_token_id(tokenizer)
    encoded = [encode_for_scoring(r, tokenizer, max_length) for r in records]
    device = input_device(model)

    def run(idx: list[int]) -> float:
        with Timer(device) as timer:
            letter_logprobs(model, [encoded[i] for i in idx], letter_ids, pad_id)
        return timer.seconds

    memory = PeakMemory(device).start()
    with scoring_mode(model):
        for i in range(min(warmup, len(encoded))):
            run([i])
        latency = [run([i]) * 1000 for i in range(min(n_latency, len(encoded)))]
        throughput = []
        for bs in batch_sizes:
            batches = length_sorted_batches([e["length"] for e in encoded], bs)
            run(batches[len(batches) // 2])
            seconds = sum(run(b) for b in batches)
            throughput.append({"batch_size": bs, "qps": len(encoded) / seconds, "seconds": seconds})
    best = max(throughput, key=lambda t: t["qps"])
    return {"latency_ms_median": statistics.median(latency), "latency_ms_p90": float(np.percentile(latency, 90)),
            "latency_n": len(latency), "throughput": throughput, "best_batch_size": best["batch_size"],
            "best_qps": best["qps"], **memory.read(),
            "conditions": _conditions(model, encoded)}
