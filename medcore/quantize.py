"""Precision presets, loading a model quantized, and what quantization measurably costs and saves.

Presets (``quant.precision``): ``bf16`` (no quantization), ``fp32`` (no quantization, every weight float32: the
setting in which scoring reproduces lm-evaluation-harness question for question), ``int8`` (LLM.int8, bitsandbytes ``Linear8bitLt``),
``nf4`` and ``fp4`` (bitsandbytes ``Linear4bit``, blocksize 64), each 4-bit one with or without double
quantization (``quant.double_quant``: the per-block absmax is itself quantized to 8 bits), computing in
``quant.compute_dtype`` (bf16: Gemma overflows in fp16). bitsandbytes leaves the embedding and the norms unquantized.

On a CPU with AVX512-BF16 a ``Linear4bit`` repacks its weight the first time it runs in eval mode without
gradients, and later training steps then get silently wrong gradients (layers whose output size is not a
multiple of 32 crash in eval). :func:`disable_cpu_repack` turns that off and :func:`load_quantized` calls it after
every load; ``tests/test_quantize.py`` keeps a test that fails without it.

The footprint is measured on the loaded modules (:func:`footprint`): bytes of weights by dtype and by module kind,
bytes of quantization constants (absmax, quant map, and for double quantization the nested absmax/quant map/offset),
and bytes of the checkpoint that ``save_pretrained`` writes. :func:`quantization_error` compares every dequantized
layer with the original weights (relative Frobenius error).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pandas as pd
import torch
from transformers import BitsAndBytesConfig

from medcore.config import PRECISIONS, QuantConfig

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}
KINDS = ("embedding", "attention", "mlp", "norm", "other")
UNQUANTIZED = ("bf16", "fp32")


def quantization_config(precision: str, double_quant: bool = True, compute_dtype: str | torch.dtype = "bfloat16",
                        quant_storage: str | torch.dtype | None = None) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig of a preset; None for ``bf16`` and ``fp32`` (load unquantized).

    `quant_storage` (4-bit only): the dtype the packed weights are stored in, uint8 by default. FSDP shards only
    floating tensors of one dtype, so FSDP + QLoRA stores them in bf16, the dtype of the rest of the model.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; choose one of {', '.join(PRECISIONS)}")
    dtype = DTYPES[compute_dtype] if isinstance(compute_dtype, str) else compute_dtype
    if precision in UNQUANTIZED:
        return None
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = {"bnb_4bit_quant_storage": DTYPES[quant_storage] if isinstance(quant_storage, str) else quant_storage} \
        if quant_storage is not None else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=precision,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype, **storage)


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Stop every ``Linear4bit`` from repacking its weight for the AVX512-BF16 CPU kernel; returns how many.

    The repacked path has no autograd kernel (``gemv_4bit``): after one evaluation pass, training gets wrong
    gradients. Costs nothing on GPU, where the flag is never read.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_quantized(spec: str, quant_cfg: QuantConfig, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None, quant_storage: str | torch.dtype | None = None,
                   **kwargs: Any) -> torch.nn.Module:
    """Load `spec` (see models.load_model) at `quant_cfg`'s precision on `device` (default: CUDA if present).

    Non-quantized parts (embedding, norms; everything for bf16) get `dtype`, by default the compute dtype (float32
    for ``fp32``, whatever the compute dtype).
    `quant_storage`: see :func:`quantization_config` (FSDP + QLoRA: bf16, with `dtype` bf16 too).
    """
    from medcore import models

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    qcfg = quantization_config(quant_cfg.precision, quant_cfg.double_quant, quant_cfg.compute_dtype, quant_storage)
    dtype = dtype or (torch.float32 if quant_cfg.precision == "fp32" else DTYPES[quant_cfg.compute_dtype])
    kwargs.setdefault("device_map", {"": device.index or 0} if device.type == "cuda" else {"": "cpu"})
    model = models.load_model(spec, dtype=dtype, quantization_config=qcfg, **kwargs)
    if qcfg is None and next(model.parameters()).device != device:
        model = model.to(device)
    disable_cpu_repack(model)
    return model


def module_kind(name: str) -> str:
    """embedding | attention | mlp | norm | other, from a parameter's dotted name (Gemma/Llama naming)."""
    low = name.lower()
    if "embed" in low or "lm_head" in low:
        return "embedding"
    if "norm" in low:
        return "norm"
    if "attn" in low or "attention" in low:
        return "attention"
    if "mlp" in low or "feed_forward" in low:
        return "mlp"
    return "other"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_constants(param: torch.nn.Parameter, seen: set[int]) -> dict[str, int]:
    """Bytes of the constants a quantized weight needs besides its packed values (shared tensors count once)."""
    state = getattr(param, "quant_state", None)
    parts: dict[str, Any] = {}
    if state is not None:  # 4-bit: fp32 absmax per block of 64, or uint8 absmax + a nested fp32 level
        parts = {"absmax": state.absmax, "quant_map": state.code}
        if state.nested:
            parts.update(nested_absmax=state.state2.absmax, nested_quant_map=state.state2.code, offset=state.offset)
    elif getattr(param, "SCB", None) is not None:  # int8: one fp32 scale per output row
        parts = {"row_scale": param.SCB}
    out = {}
    for key, t in parts.items():
        if not torch.is_tensor(t):
            out[key] = 4  # a Python float offset, stored as one fp32
        elif t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[key] = _nbytes(t)
    return out


def disk_bytes(model: torch.nn.Module, save_dir: str | Path | None = None) -> int:
    """Bytes of the weight files ``save_pretrained`` writes (into `save_dir`, or a temporary folder)."""
    def measure(folder: Path) -> int:
        model.save_pretrained(folder)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))

    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        return measure(Path(save_dir))
    with tempfile.TemporaryDirectory(prefix="medcore-footprint-") as tmp:
        return measure(Path(tmp))


def footprint(model: torch.nn.Module, save_dir: str | Path | None = None, disk: bool = True) -> dict[str, Any]:
    """Measured bytes of a loaded model: weights by dtype and kind, quantization constants, checkpoint on disk.

    Tied weights count once. ``total_bytes`` = weights + constants + buffers (rotary tables and the like).
    ``disk_bytes`` saves the model (to `save_dir` or a temporary folder); ``disk=False`` skips that.
    """
    by_dtype: dict[str, int] = {}
    by_kind = dict.fromkeys(KINDS, 0)
    constants: dict[str, int] = {}
    seen: set[int] = set()
    seen_constants: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = _nbytes(param)
        dtype = str(param.dtype).replace("torch.", "")
        if getattr(param, "quant_state", None) is not None:
            dtype = f"{param.quant_state.quant_type} (packed {dtype})"
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
        by_kind[module_kind(name)] += size
        for key, value in _quant_constants(param, seen_constants).items():
            constants[key] = constants.get(key, 0) + value
    buffers = sum(_nbytes(b) for b in model.buffers())
    weights = sum(by_dtype.values())
    const_total = sum(constants.values())
    report = {
        "weight_bytes": weights,
        "quant_constant_bytes": const_total,
        "buffer_bytes": buffers,
        "total_bytes": weights + const_total + buffers,
        "parameters": sum(p.numel() * (2 if getattr(p, "quant_state", None) is not None else 1)
                          for p in {id(p): p for p in model.parameters()}.values()),
        "by_dtype": by_dtype,
        "by_kind": by_kind,
        "quant_constants": constants,
    }
    if disk:
        report["disk_bytes"] = disk_bytes(model, save_dir)
    return report


def footprint_table(reports: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per labelled footprint report (e.g. {"bf16": ..., "nf4+dq": ...}), bytes and GB."""
    rows = []
    for label, r in reports.items():
        row = {"precision": label, **{f"{k}_bytes": v for k, v in r["by_kind"].items()}}
        row.update({k: r[k] for k in ("weight_bytes", "quant_constant_bytes", "total_bytes") if k in r})
        if "disk_bytes" in r:
            row["disk_bytes"] = r["disk_bytes"]
        row["total_gb"] = r["total_bytes"] / 1e9
        rows.append(row)
    return pd.DataFrame(rows)


def _dequantized(module: torch.nn.Module) -> torch.Tensor | None:
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    if isinstance(module, bnb.nn.Linear8bitLt):  # int8 rows scaled by their absmax (SCB) / 127
        return module.weight.data.float() * module.weight.SCB.float().unsqueeze(1) / 127.0
    return None


def quantization_error(model_fp: torch.nn.Module, model_q: torch.nn.Module) -> pd.DataFrame:
    """Relative Frobenius error ||W - dequant(Q(W))|| / ||W|| of every quantized layer of `model_q`.

    Layers are matched by name with `model_fp` (the same weights, unquantized). NF4 gives about 0.1.
    """
    reference = dict(model_fp.named_modules())
    rows = []
    for name, module in model_q.named_modules():
        approx = _dequantized(module)
        if approx is None or name not in reference:
            continue
        exact = reference[name].weight.detach().float().to(approx.device)
        rows.append({
            "layer": name, "kind": module_kind(name), "shape": tuple(exact.shape), "numel": exact.numel(),
            "rel_error": ((exact - approx).norm() / exact.norm()).item(),
        })
    return pd.DataFrame(rows, columns=["layer", "kind", "shape", "numel", "rel_error"])
