"""The lm-evaluation-harness's scoring of a multiple-choice question, reimplemented as the reference.

Per question, four log-likelihood requests: context = the prompt, continuation = `` A`` .. `` D``, encoded as the
harness's ``HFLM._encode_pair`` does (:func:`harness_encode_pair`), each run through the model's own forward with
the head on every position. Batch size 1 is the exact reference that :func:`medcore.evaluate.score_choices` is
held to; batched, four sequences per question, it is the bench's timed peer.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medcore.evaluate import keyed_records
from medcore.logprobs import input_device, scoring_mode
from medcore.prompts import LETTERS, answer_token_ids, format_prompt


def harness_encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``HFLM._encode_pair``: trailing spaces of the context move to the continuation,
    context + continuation are encoded together and split after the context's own encoding. ``tok_encode``
    adds BOS, as the harness does for Gemma (``add_bos_token=True``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation

    def tok_encode(text: str) -> list[int]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids

    whole, ctx = tok_encode(context + continuation), tok_encode(context)
    return ctx, whole[len(ctx):]


def harness_requests(tokenizer, records: Sequence[dict]) -> list[tuple[int, int, list[int], list[int]]]:
    """(question, letter, context ids, continuation ids): the harness's four requests per question."""
    out = []
    for q, rec in enumerate(records):
        context = format_prompt(rec["question"], rec["options"])
        for j, letter in enumerate(LETTERS):
            ctx, cont = harness_encode_pair(tokenizer, context, " " + letter)
            out.append((q, j, ctx, cont))
    return out


def harness_loglikelihood_choices(model, tokenizer, records: Iterable[dict], batch_size: int = 1,
                                  autocast: bool = False, share_forwards: bool = True,
                                  progress: bool = False) -> pd.DataFrame:
    """The reference: per question, four log-likelihood requests, context + continuation (`` A`` .. `` D``),
    each run through the model's own forward (head on every position), the continuation's token log-probabilities
    (log-softmax in float32 over every real position) summed in float64.

    ``batch_size`` 1 (the default) is the slow, exact reference: one unpadded forward per sequence. Larger batches
    run the harness's way: sequences sorted longest first, right-padded without a mask (causal attention keeps the
    padding out of the real positions), so only the batched matmuls' rounding differs. ``share_forwards``: requests
    whose inputs are identical (one-token continuations) share one forward, as the harness's logits cache does;
    without it every request runs its own (four sequences per question, the bench's timed peer).
    ``autocast``: the forward under bf16 autocast.

    Columns: id, answer, pred, correct, loglik_A..D, context_tokens, single_token (every continuation encoded
    to exactly the token :func:`medcore.evaluate.score_choices` reads). ``df.attrs``: requests, forward_sequences
    and real_tokens (the tokens of the sequences run). No truncation (the harness cuts from the left instead).
    """
    records = keyed_records(records)
    letter_ids = answer_token_ids(tokenizer)
    requests = harness_requests(tokenizer, records)
    inputs = [tuple((ctx + cont)[:-1]) for _, _, ctx, cont in requests]
    sequences = list(dict.fromkeys(inputs)) if share_forwards else inputs
    index = {seq: i for i, seq in enumerate(sequences)}
    users: list[list[int]] = [[] for _ in sequences]  # the requests each sequence answers
    for r, seq in enumerate(inputs):
        users[index[seq] if share_forwards else r].append(r)
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    device = input_device(model)
    loglik = np.zeros((len(records), 4))
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with scoring_mode(model), cast, tqdm(total=len(sequences), disable=not progress, desc="harness reference",
                                         unit="seq") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            logits = model(input_ids=ids.to(device), use_cache=False).logits
            done, sums = [], []
            for row, i in enumerate(chunk):
                logp = torch.log_softmax(logits[row, :len(sequences[i])].float(), dim=-1)
                for r in users[i]:
                    _, _, ctx, cont = requests[r]
                    pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=logp.device)
                    sums.append(logp[pos, torch.tensor(cont, device=logp.device)].double().sum())
                    done.append(r)
            # one transfer per batch (the harness syncs once per request: this is kinder to it when timed)
            for r, value in zip(done, torch.stack(sums).cpu().tolist()):
                loglik[requests[r][0], requests[r][1]] = value
            del logits, sums
            bar.update(len(chunk))
    single = np.ones(len(records), dtype=bool)
    context_tokens = np.zeros(len(records), dtype=np.int64)
    for q, j, ctx, cont in requests:
        single[q] &= cont == [letter_ids[j]]
        context_tokens[q] = len(ctx)
    pred = loglik.argmax(axis=1)
    df = pd.DataFrame({"id": [rec.get("id") for rec in records], "answer": [rec["answer"] for rec in records],
                       "pred": pred})
    df["correct"] = df["answer"] == df["pred"]
    for j, letter in enumerate(LETTERS):
        df[f"loglik_{letter}"] = loglik[:, j]
    df["context_tokens"] = context_tokens
    df["single_token"] = single
    df.attrs.update(requests=len(requests), forward_sequences=len(sequences),
                    real_tokens=int(sum(len(s) for s in sequences)))
    return df
