"""The forward pass of scoring: exact log-probabilities at each prompt's last position, and what scorers share.

The decoder body runs in the model's dtype, but the head does not. The final hidden state at the last position
goes, in float32, through the output head made float32 (Gemma's soft-capping in float32 too); the
full-vocabulary log-softmax normaliser is a float32 log-sum-exp over the head in chunks of ``HEAD_CHUNK_ROWS``
rows, so no float32 copy of the whole head (0.5 B parameters for Gemma-2B) is ever made. bf16 logits tie often,
and a tie would go to the first letter; these do not round. With an fp32 model (``quant.precision=fp32``) the
choices are the harness's, question for question. A head that is not a plain floating-point ``nn.Linear``
(quantized, adapted) and model types outside ``_HEAD_ONLY_TYPES`` get their logits in the model's own dtype,
cast to float32 afterwards.

Shared by every scorer: :func:`scoring_mode` (eval mode without autograd, the caller's mode restored after),
:func:`input_device`, :func:`pad_token_id` and :func:`length_sorted_batches`.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from medcore.models import causal_lm
from medcore.prompts import Collator

# model types whose *ForCausalLM forward is "decoder body -> lm_head -> optional final_logit_softcapping";
# for others, scoring falls back to the model's own forward (correct, but the head runs on every position)
_HEAD_ONLY_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral", "qwen2", "qwen3", "phi3"}
HEAD_CHUNK_ROWS = 8192  # head rows made float32 at a time: 64 MB for Gemma-2B's width, however large the vocabulary


# ---- shared by the scorers ---------------------------------------------------------------------------------------

def input_device(model) -> torch.device:
    """Where the model's inputs go: the device of its input embedding."""
    return model.get_input_embeddings().weight.device


def pad_token_id(tokenizer) -> int:
    """The id right-padded batches are filled with: the pad token, else end-of-sequence, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


@contextlib.contextmanager
def scoring_mode(model):
    """Eval mode under ``torch.inference_mode``; a model that was training is put back in training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Fixed-size batches of length-sorted indices: little padding, same work for every run."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ---- the forward pass --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _full_float32(device_type: str):
    """float32 matmuls at full precision: no autocast to bf16, no TF32 (a caller may have allowed it)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _plain_linear(head) -> bool:
    return (isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward
            and head.weight.is_floating_point())


def _float32_head(hidden: torch.Tensor, head: torch.nn.Linear, cap: float | None,
                  token_ids: Sequence[int] | None) -> torch.Tensor:
    """log-softmax over the vocabulary of ``head(hidden)``, all in float32; only ``token_ids``'s columns if given."""
    weight, bias = head.weight, head.bias
    h = hidden.to(weight.device).float()

    def logits(rows: slice | torch.Tensor) -> torch.Tensor:
        z = h @ weight[rows].float().T
        if bias is not None:
            z = z + bias[rows].float()
        return torch.tanh(z / cap) * cap if cap else z

    with _full_float32(h.device.type):
        chunks = [slice(i, i + HEAD_CHUNK_ROWS) for i in range(0, weight.shape[0], HEAD_CHUNK_ROWS)]
        if token_ids is None:
            return torch.log_softmax(torch.cat([logits(c) for c in chunks], dim=1), dim=-1)
        ids = torch.tensor(list(token_ids), device=h.device)
        norm = torch.full((h.shape[0],), -torch.inf, device=h.device)
        picked = torch.empty((h.shape[0], len(ids)), device=h.device)
        for c in chunks:
            z = logits(c)
            norm = torch.logaddexp(norm, torch.logsumexp(z, dim=-1))
            inside = (ids >= c.start) & (ids < c.start + z.shape[1])
            picked[:, inside] = z[:, ids[inside] - c.start]  # the same products the normaliser summed
        return picked - norm[:, None]


def last_position_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           token_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Log-softmax over the full vocabulary (float32, batch x vocab, or batch x len(token_ids) for those columns
    only) at each row's last real token.

    Rows are right-padded. The decoder body runs on all positions, the head only on the gathered last hidden state
    of each row, in float32 (module docstring); Gemma-2's ``final_logit_softcapping`` is applied as the model's own
    forward does, in float32.
    """
    causal = causal_lm(model)
    config = causal.config.get_text_config() if hasattr(causal.config, "get_text_config") else causal.config
    cap = getattr(config, "final_logit_softcapping", None)
    last = attention_mask.sum(dim=1) - 1
    head = causal.get_output_embeddings()
    body = getattr(causal, "base_model", causal)
    if getattr(causal.config, "model_type", None) in _HEAD_ONLY_TYPES and head is not None and body is not causal:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]
        if _plain_linear(head):
            return _float32_head(hidden, head, cap, token_ids)
        logits = head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp if token_ids is None else logp[:, list(token_ids)]


def letter_logprobs(model, features: list[dict], letter_ids: list[int], pad_id: int) -> np.ndarray:
    """:func:`last_position_logprobs` of the ``letter_ids`` columns for encoded prompts (right-padded with
    ``pad_id``), as float64 numpy (prompts x letters)."""
    batch = Collator(pad_id)(features)
    device = input_device(model)
    logp = last_position_logprobs(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), letter_ids)
    return logp.cpu().numpy().astype(np.float64)
