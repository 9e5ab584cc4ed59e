"""PEFT presets, attaching an adapter (also to a 4-bit model), the trainable-parameter report, and export.

Supported (``RunConfig.lora``): ``method`` lora | dora (weight-decomposed, ``use_dora``) | rslora (rank-stabilized
scaling alpha/sqrt(r), ``use_rslora``) | none (no adapter: the base model as it is, for zero-shot baselines);
``targets`` attention (q, k, v, o projections) | mlp (gate, up, down) | all-linear (both; never the LM head);
``r``, ``alpha``, ``dropout``.

For a k-bit model the preparation is done here by hand instead of with peft's ``prepare_model_for_kbit_training``:
that function casts every non-quantized parameter to fp32, the frozen embedding included (Gemma-2B: 0.52 B
parameters, about 2.1 GB more). A frozen embedding can stay bf16; only the input gradients must be enabled so that
checkpointed layers see a tensor that requires grad. Gemma's RMSNorm already computes in fp32, so casting norm
weights (``cast_norms``) is optional.
"""
from __future__ import annotations

from pathlib import Path

import peft
import torch

from medcore.config import LoraConfig

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES = {"attention": list(ATTENTION), "mlp": list(MLP), "all-linear": list(ATTENTION + MLP)}


def peft_config(lora_cfg: LoraConfig) -> peft.LoraConfig:
    """The peft LoraConfig for a RunConfig.lora section (method lora, dora or rslora)."""
    if lora_cfg.method not in ("lora", "dora", "rslora"):
        raise ValueError(f"lora.method={lora_cfg.method!r} has no adapter config")
    return peft.LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=TARGET_MODULES[lora_cfg.targets], bias="none", task_type="CAUSAL_LM",
        use_dora=lora_cfg.method == "dora", use_rslora=lora_cfg.method == "rslora",
    )


def prepare_kbit(model: torch.nn.Module, cast_norms: bool = False) -> torch.nn.Module:
    """Freeze the base and enable input gradients, leaving the embedding in its dtype (bf16 stays bf16)."""
    for param in model.parameters():
        param.requires_grad_(False)
    model.enable_input_require_grads()
    if cast_norms:
        for name, module in model.named_modules():
            if "norm" in name.split(".")[-1].lower():
                module.float()
    return model


def attach_adapter(model: torch.nn.Module, lora_cfg: LoraConfig, quantized: bool,
                   cast_norms: bool = False) -> torch.nn.Module:
    """Return `model` with a trainable adapter (a PeftModel), or unchanged for ``method="none"``.

    LoRA weights are created in fp32 (peft's default), whatever the base dtype; their initialisation draws from
    torch's global RNG, so seed before calling for a reproducible run.
    """
    if lora_cfg.method == "none":
        return model
    if quantized:
        prepare_kbit(model, cast_norms=cast_norms)
    return peft.get_peft_model(model, peft_config(lora_cfg))


def trainable_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameters (a packed 4-bit weight counts its real element number) and the percentage."""
    trainable = total = 0
    for param in {id(p): p for p in model.parameters()}.values():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n = int(torch.Size(param.quant_state.shape).numel()) if param.quant_state is not None else 2 * n
        total += n
        if param.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def require_adapter(adapter_dir: str | Path | None) -> None:
    """Refuse a folder without ``adapter_config.json`` before any model is loaded for it (None: no adapter)."""
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {adapter_dir}: no adapter_config.json there (a PEFT adapter folder, e.g. "
                                "<output-dir>/adapter of `medcore train`)")


def merge_for_export(base_spec: str, adapter_dir: str | Path, out_dir: str | Path,
                     dtype: torch.dtype = torch.bfloat16) -> Path:
    """Merge an adapter into a bf16 copy of the base model and save it (with the tokenizer) to `out_dir`.

    The result is a standard Hugging Face folder (``AutoModelForCausalLM.from_pretrained`` loads it, and so do
    lm-evaluation-harness and other tools) with no PEFT left in it. `out_dir` must be empty or new: medcore writes
    nothing over files it did not make.

    The merge is into the unquantized weights on purpose: merging into 4-bit weights means dequantize, add and
    re-quantize, and the re-quantization error changes the model's outputs. The merged bf16 model equals base +
    adapter within bf16 rounding; quantize it again for deployment only if you then measure it again.
    """
    from medcore import models

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: {'not a folder' if not out.is_dir() else 'not empty'}; "
                              "export writes into a new or empty folder")
    require_adapter(adapter_dir)
    base = models.load_model(base_spec, dtype=dtype)
    merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    models.load_tokenizer(base_spec).save_pretrained(out)
    return out
