"""How a training step runs: bf16 autocast, peft's float32 copy of each LoRA input, compiled decoder layers.

:func:`medcore.train.train` enters :func:`lora_input_float32` and :func:`compiled_layers` around the Trainer's loop;
both leave the model as they found it, so evaluation and scoring afterwards run eager with peft's defaults.
"""
from __future__ import annotations

import contextlib

import torch

from medcore.config import RunConfig
from medcore.models import causal_lm


def uses_autocast(cfg: RunConfig, on_cuda: bool) -> bool:
    """Whether training steps run under bf16 autocast: ``train.autocast`` auto = on CUDA only."""
    return cfg.train.autocast == "bf16" or (cfg.train.autocast == "auto" and on_cuda)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a causal LM, under a peft wrapper or not (``model.model.layers`` in transformers)."""
    causal = causal_lm(model)
    layers = getattr(getattr(causal, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(causal).__name__} has no model.layers to compile; set train.compile=false")
    return list(layers)


def skips_lora_input_float32(method: str, autocast: bool, lora_input_float32: bool) -> bool:
    """Whether training skips peft's float32 copy of each LoRA input (see :func:`lora_input_float32`)."""
    return autocast and method in ("lora", "rslora") and not lora_input_float32


def lora_input_float32(model: torch.nn.Module, cfg: RunConfig, on_cuda: bool):
    """Context in which peft's LoRA layers leave their input in bf16 instead of copying it to the adapter's
    float32 (``peft.helpers.disable_input_dtype_casting``), when training runs under bf16 autocast
    (:func:`uses_autocast`), the method is lora or rslora, and ``train.lora_input_float32`` is off; otherwise a
    context that changes nothing. Without autocast a bf16 input would meet the adapter's float32 weights.

    Under autocast the float32 copy is cast back to bf16 for the matmul, so loss and gradients are unchanged with
    LoRA dropout 0 (tested); with dropout the mask scales the bf16 input instead of its float32 copy, as peft's
    4-bit layer does under autocast anyway. DoRA keeps the copy: its magnitude terms use the input outside the
    matmuls and come out differently (by about 1e-3 in the loss on the test model).
    """
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(
        model, active=skips_lora_input_float32(cfg.lora.method, uses_autocast(cfg, on_cuda),
                                               cfg.train.lora_input_float32))


lora_inputs_in_bf16, skips_lora_input_copy = lora_input_float32, skips_lora_input_float32  # old names, one release


@contextlib.contextmanager
def compiled_layers(model: torch.nn.Module, on: bool):
    """Regional compilation inside the block: ``torch.compile`` each decoder layer (``dynamic=True``: token-budget
    batches vary in shape), eager again after it. The layers share their code, so one compiled graph serves all
    of them and compiling costs about what one layer costs; compiled code stays cached between blocks."""
    if not on:
        yield
        return
    import torch._inductor.config as inductor_config

    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    # Random ops through eager RNG (aten) instead of inductor's own: with inductor's RNG, a compiled layer that
    # gradient checkpointing recomputes fails in AOTAutograd's partitioner on CUDA whenever LoRA dropout is on, and
    # eager RNG also draws the same dropout masks as an eager run with the same seed.
    try:
        with inductor_config.patch(fallback_random=True):
            yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
