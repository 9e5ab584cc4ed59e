"""Multiple-choice scoring of a model: one forward pass per question, ties that favour no letter, option rotations.

:func:`score_choices` reads, at the last prompt position (the prompt ends in ``Answer:``), the full-vocabulary
log-probabilities of the single tokens `` A`` .. `` D``, exact (:mod:`medcore.logprobs`: float32 head). The
lm-evaluation-harness asks four log-likelihood requests instead (context = prompt, continuation = `` A`` .. `` D``);
for a one-token continuation the harness's log-likelihood *is* that entry, so both pick the same letter with a
quarter of the forward passes. :mod:`medcore.harness_reference` is that four-request reference.

Ties: a remaining exact tie among k letters favours none. Accuracies give each tied letter 1/k credit (column
``credit``); ``pred`` is one of the tied letters drawn uniformly with a seed from the question id (so ``correct``
is a fair draw and paired tests stay binary); ties are counted (``tied``, metric ``ties``).

Rotations (``rotations=True``): each question is scored again with its options in the other three cyclic orders
(``option_order.ROTATIONS``), one forward pass each. From them: circular accuracy (right in all four orders, as
MMBench's CircularEval) and permutation-debiased accuracy (the option whose log-probability, averaged over the four
orders in which it sits once under each letter, is highest; in the spirit of PriDe, Zheng et al., ICLR 2024): a
pure letter preference adds the same amount to every option's average and cannot move it.

:func:`generate_choices` is the generation scorer (greedy decoding, the first A-D parsed). The frames these return
are summarised by :mod:`medcore.accuracy`; what scoring costs is measured by :mod:`medcore.scoring_cost`.

Supported: any Hugging Face causal LM, PEFT-wrapped (LoRA/DoRA, which live inside the modules), bitsandbytes
quantized, on CPU or CUDA. Scoring puts the model in eval mode and restores its previous mode afterwards.
"""
from __future__ import annotations

import contextlib
import re
import zlib
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medcore.logprobs import input_device, length_sorted_batches, letter_logprobs, pad_token_id, scoring_mode
from medcore.option_order import ROTATIONS, reorder
from medcore.prompts import LETTERS, answer_token_ids, encode_for_scoring
from medcore.schema import require_answers
from medcore.subjects import SUBJECT_TIERS


# ---- inputs ----------------------------------------------------------------------------------------------------

def keyed_records(records: Any, purpose: str = "scoring") -> list[dict]:
    """Records as a list of dicts; refuses a split without answer keys (MedMCQA test) with a clear message."""
    if hasattr(records, "features") and "answer" in getattr(records, "column_names", ()):
        require_answers(records, purpose)
    if isinstance(records, pd.DataFrame):
        records = records.to_dict(orient="records")
    records = list(records)
    missing = sum(r.get("answer") is None for r in records)
    if missing:
        raise ValueError(f"{missing} of {len(records)} records have no answer key (a keyless split such as "
                         f"MedMCQA test?); {purpose} needs one")
    return records


def _tier(record: dict) -> str:
    if record.get("tier"):  # subjects.add_tier was applied
        return record["tier"]
    return SUBJECT_TIERS.get(record.get("subject") or "Unknown", "unknown")


# ---- choices, ties and rotations ----------------------------------------------------------------------------------

def _choose(scores: np.ndarray, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(choice, top): ``top`` marks each row's highest scores; a tie goes to one of them drawn uniformly, seeded by
    the row's key (the question id), so a rerun, or another model with the same tie, draws the same way."""
    top = scores == scores.max(axis=1, keepdims=True)
    choice = top.argmax(axis=1)
    for i in np.flatnonzero(top.sum(axis=1) > 1):
        choice[i] = np.random.default_rng(zlib.crc32(keys[i].encode())).choice(np.flatnonzero(top[i]))
    return choice.astype(np.int64), top


def _credit(top: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """1 for a unique right choice, 1/k when the answer is among k tied top choices, else 0."""
    return top[np.arange(len(answer)), answer] / np.maximum(top.sum(axis=1), 1)


def _rotation_columns(ids: list[str], answer: np.ndarray, logp: np.ndarray) -> dict[str, np.ndarray]:
    """Per question, from ``logp`` (rotations x questions x letters, each rotation in its own letters): the choice
    in each rotation, circular and debiased choice, credit and correctness."""
    out: dict[str, np.ndarray] = {"ties_in_orders": np.zeros(len(answer), dtype=np.int64)}
    circular_credit, circular_correct = np.ones(len(answer)), np.ones(len(answer), dtype=bool)
    by_option = []
    for k, order in enumerate(ROTATIONS):
        by_option.append(logp[k][:, [order.index(option) for option in range(4)]])
        key = np.array([order.index(a) for a in answer], dtype=np.int64)
        choice, top = _choose(logp[k], [f"{i}/rotation{k}" for i in ids])
        circular_credit *= _credit(top, key)
        circular_correct &= choice == key
        if k:
            out[f"pred_r{k}"] = choice
            out.update({f"logprob_r{k}_{letter}": logp[k][:, j] for j, letter in enumerate(LETTERS)})
        out["ties_in_orders"] += top.sum(axis=1) > 1
    # summed in sorted order: options that got the same four numbers in other orders tie exactly
    mean = np.sort(np.stack(by_option), axis=0).sum(axis=0) / len(ROTATIONS)
    debiased, top = _choose(mean, [f"{i}/debiased" for i in ids])
    out.update(circular_credit=circular_credit, circular_correct=circular_correct, debiased_pred=debiased,
               debiased_credit=_credit(top, answer), debiased_correct=debiased == answer,
               debiased_tied=top.sum(axis=1) > 1)
    return out


def _frame(records: list[dict], encoded: list[dict], logp: np.ndarray, rotated: np.ndarray | None = None) -> pd.DataFrame:
    norm = np.exp(logp - logp.max(axis=1, keepdims=True))
    norm /= norm.sum(axis=1, keepdims=True)
    ids = [str(i if r.get("id") is None else r["id"]) for i, r in enumerate(records)]  # seeds of the tie draws
    answer = np.array([r["answer"] for r in records], dtype=np.int64)
    pred, top = _choose(logp, ids)
    df = pd.DataFrame({
        "id": [r.get("id") for r in records],
        "subject": [r.get("subject") for r in records],
        "tier": [_tier(r) for r in records],
        "choice_type": [r.get("choice_type") for r in records],
        "answer": answer,
        "pred": pred,
    })
    df["correct"] = df["answer"].to_numpy() == df["pred"].to_numpy()
    df["credit"] = _credit(top, answer)
    for j, letter in enumerate(LETTERS):
        df[f"logprob_{letter}"] = logp[:, j]
    df["prob"] = norm[np.arange(len(pred)), pred]
    df["tied"] = top.sum(axis=1) > 1
    df["letter_mass"] = np.exp(logp).sum(axis=1)  # how much of the vocabulary's mass the four letters get
    df["prompt_tokens"] = [e["length"] for e in encoded]
    df["truncated"] = [bool(e["truncated"]) for e in encoded]
    if rotated is not None:
        extra = pd.DataFrame(_rotation_columns(ids, answer, rotated), index=df.index)
        df = pd.concat([df, extra], axis=1)
    return df


def rotations_on(setting: bool | None, device: torch.device | str) -> bool:
    """``eval.rotations``: True / False as given; None (the default) means on with CUDA, off on a CPU."""
    return bool(setting) if setting is not None else torch.device(device).type == "cuda"


def score_choices(model, tokenizer, records: Iterable[dict], batch_size: int = 16, max_length: int = 512,
                  progress: bool = True, autocast: bool = False, rotations: bool = False) -> pd.DataFrame:
    """Score every question in one forward pass (four with ``rotations``); one row per question, in the input order.

    Columns: id, subject, tier, choice_type, answer, pred (0-3), correct, credit (1/k among k tied letters),
    logprob_A..D (full-vocabulary log-probabilities, float32 head), prob (of the chosen letter, normalized over
    A-D), tied (exactly equal top letters; ``pred`` is then one drawn uniformly), letter_mass (the four letters'
    share of the vocabulary's probability), prompt_tokens, truncated (in the original order).
    With ``rotations`` also, for the orders k = 1..3 (letter j shows option (j + k) % 4): logprob_r<k>_A..D and
    pred_r<k> (in that order's letters); circular_credit / circular_correct (right in all four orders),
    debiased_pred (an option index, i.e. a letter of the original order), debiased_credit / debiased_correct,
    debiased_tied, ties_in_orders (how many of the four orders tied).
    Long prompts lose the end of the question, never the choices (``prompts.encode_prompt``).
    ``autocast``: run the decoder body under bf16 autocast, as training does. peft then leaves each LoRA input in
    bf16 instead of copying it to the adapter's float32, and the adapter's matmuls run in bf16. The result is faster
    on a GPU, and its log-probabilities differ from the default's by bf16 rounding of the hidden state (the head
    stays float32).
    """
    records = keyed_records(records)
    letter_ids = answer_token_ids(tokenizer)
    orders = ROTATIONS if rotations else ROTATIONS[:1]
    encoded = [encode_for_scoring(reorder(r, order), tokenizer, max_length) for order in orders for r in records]
    logp = np.zeros((len(encoded), 4))
    pad_id = pad_token_id(tokenizer)
    cast = (torch.autocast(input_device(model).type, dtype=torch.bfloat16) if autocast
            else contextlib.nullcontext())
    with scoring_mode(model), cast, tqdm(total=len(encoded), disable=not progress, desc="scoring",
                                         unit="prompt") as bar:
        for batch in length_sorted_batches([e["length"] for e in encoded], batch_size):
            logp[batch] = letter_logprobs(model, [encoded[i] for i in batch], letter_ids, pad_id)
            bar.update(len(batch))
    logp = logp.reshape(len(orders), len(records), 4)
    return _frame(records, encoded[:len(records)], logp[0], logp if rotations else None)


# ---- generation (optional) ---------------------------------------------------------------------------------------

_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


def parse_letter(text: str) -> int | None:
    """Index of the first standalone A-D in generated text (" B", "B.", "(C)"), or None."""
    m = _LETTER.search(text)
    return None if m is None else LETTERS.index(m.group(1))


def generate_choices(model, tokenizer, records: Iterable[dict], max_new_tokens: int = 4, max_length: int = 512,
                     progress: bool = True) -> pd.DataFrame:
    """Greedy generation after ``Answer:``, parsing the first A-D letter; pred = -1 where none parses.

    One question at a time (no padding). ``df.attrs["unparseable"]`` counts answers without a letter.
    """
    records = keyed_records(records)
    device, pad_id = input_device(model), pad_token_id(tokenizer)
    texts, preds, encoded = [], [], []
    with scoring_mode(model):
        for rec in tqdm(records, disable=not progress, desc="generating", unit="q"):
            enc = encode_for_scoring(rec, tokenizer, max_length - max_new_tokens)
            ids = torch.tensor([enc["input_ids"]], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            letter = parse_letter(text)
            texts.append(text)
            preds.append(-1 if letter is None else letter)
            encoded.append(enc)
    df = _frame(records, encoded, np.zeros((len(records), 4)))
    df = df.drop(columns=[c for c in df.columns if c.startswith("logprob_")] + ["prob", "letter_mass", "tied"])
    df["pred"] = np.array(preds, dtype=np.int64)
    df["correct"] = df["pred"] == df["answer"]
    df["generated"] = texts
    df["parsed"] = df["pred"] >= 0
    df.attrs["unparseable"] = int((~df["parsed"]).sum())
    return df
