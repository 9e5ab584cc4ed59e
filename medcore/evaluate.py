"""Multiple-choice scoring in one forward pass per question, accuracy with intervals, latency and memory.

:func:`score_choices` reads, at the last prompt position (the prompt ends in ``Answer:``), the full-vocabulary
log-probabilities of the single tokens `` A`` .. `` D``. The lm-evaluation-harness asks four log-likelihood requests
instead (context = prompt, continuation = `` A`` .. `` D``); for a one-token continuation the harness's
log-likelihood *is* that entry, so both pick the same letter with a quarter of the forward passes.
:func:`harness_loglikelihood_choices` is that four-request reference: batch size 1 for the tests that prove the
equivalence, batched (four sequences per question) as the bench's timed peer.

Exact scores: the decoder body runs in the model's dtype, but the head does not. The final hidden state at the last
position goes, in float32, through the four letter rows of the output head made float32 (Gemma's soft-capping
in float32 too); the full-vocabulary log-softmax normaliser is a float32 log-sum-exp over the head in chunks of
``HEAD_CHUNK_ROWS`` rows, so no float32 copy of the whole head (0.5 B parameters for Gemma-2B) is ever made.
bf16 logits tie often, and a tie would go to the first letter; these do not round.
With an fp32 model (``quant.precision=fp32``) the choices are the harness's, question for question. A head that is
not a plain floating-point ``nn.Linear`` (quantized, adapted) and model types outside ``_HEAD_ONLY_TYPES`` get their
logits in the model's own dtype, cast to float32 afterwards.

Ties: a remaining exact tie among k letters favours none. Accuracies give each tied letter 1/k credit (column
``credit``); ``pred`` is one of the tied letters drawn uniformly with a seed from the question id (so ``correct``
is a fair draw and paired tests stay binary); ties are counted (``tied``, metric ``ties``).

Rotations (``rotations=True``): each question is scored again with its options in the other three cyclic orders
(``option_order.ROTATIONS``), one forward pass each. From them: circular accuracy (right in all four orders, as
MMBench's CircularEval) and permutation-debiased accuracy (the option whose log-probability, averaged over the four
orders in which it sits once under each letter, is highest; in the spirit of PriDe, Zheng et al., ICLR 2024): a
pure letter preference adds the same amount to every option's average and cannot move it.

Supported: any Hugging Face causal LM, PEFT-wrapped (LoRA/DoRA, which live inside the modules), bitsandbytes
quantized, on CPU or CUDA. Scoring puts the model in eval mode and restores its previous mode afterwards.
"""
from __future__ import annotations

import contextlib
import re
import statistics
import time
import zlib
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medcore.measure import PeakMemory
from medcore.models import causal_lm
from medcore.option_order import ROTATIONS, reorder
from medcore.prompts import LETTERS, Collator, answer_token_ids, encode_for_scoring, format_prompt
from medcore.stats import expected_calibration_error, grouped_accuracy, reliability_curve, wilson_interval

# model types whose *ForCausalLM forward is "decoder body -> lm_head -> optional final_logit_softcapping";
# for others, scoring falls back to the model's own forward (correct, but the head runs on every position)
_HEAD_ONLY_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral", "qwen2", "qwen3", "phi3"}
HEAD_CHUNK_ROWS = 8192  # head rows made float32 at a time: 64 MB for Gemma-2B's width, however large the vocabulary


# ---- inputs ----------------------------------------------------------------------------------------------------

def keyed_records(records: Any, purpose: str = "scoring") -> list[dict]:
    """Records as a list of dicts; refuses a split without answer keys (MedMCQA test) with a clear message."""
    if hasattr(records, "features") and "answer" in getattr(records, "column_names", ()):
        from medcore.schema import require_answers

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
    if record.get("tier"):  # data.add_tier was applied
        return record["tier"]
    from medcore.subjects import SUBJECT_TIERS

    return SUBJECT_TIERS.get(record.get("subject") or "Unknown", "unknown")


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
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


def _letter_logprobs(model, features: list[dict], letter_ids: list[int], pad_id: int) -> np.ndarray:
    batch = Collator(pad_id)(features)
    device = _input_device(model)
    logp = last_position_logprobs(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), letter_ids)
    return logp.cpu().numpy().astype(np.float64)


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
    pad_id = _pad_id(tokenizer)
    cast = (torch.autocast(_input_device(model).type, dtype=torch.bfloat16) if autocast
            else contextlib.nullcontext())
    with _eval_mode(model), cast, tqdm(total=len(encoded), disable=not progress, desc="scoring", unit="prompt") as bar:
        for batch in _sorted_batches([e["length"] for e in encoded], batch_size):
            logp[batch] = _letter_logprobs(model, [encoded[i] for i in batch], letter_ids, pad_id)
            bar.update(len(batch))
    logp = logp.reshape(len(orders), len(records), 4)
    return _frame(records, encoded[:len(records)], logp[0], logp if rotations else None)


# ---- the harness's four log-likelihood requests (reference) -----------------------------------------------------

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
    to exactly the token :func:`score_choices` reads). ``df.attrs``: requests, forward_sequences and real_tokens
    (the tokens of the sequences run). No truncation (the harness cuts from the left instead).
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
    device = _input_device(model)
    loglik = np.zeros((len(records), 4))
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with _eval_mode(model), cast, tqdm(total=len(sequences), disable=not progress, desc="harness reference",
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
    device, pad_id = _input_device(model), _pad_id(tokenizer)
    texts, preds, encoded = [], [], []
    with _eval_mode(model):
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


# ---- metrics ---------------------------------------------------------------------------------------------------

def _rate(k: float, n: int) -> tuple[float, float, float]:
    low, high = wilson_interval(k, n)
    return (k / n if n else float("nan")), low, high


def letter_distribution(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs true letter counts and shares, the predicted share with a 95 % Wilson interval: a model that
    favours one position shows it here."""
    pred = np.bincount(df["pred"][df["pred"] >= 0].astype(int), minlength=4)[:4]
    ans = np.bincount(df["answer"].astype(int), minlength=4)[:4]
    ci = [wilson_interval(int(k), int(pred.sum())) for k in pred]
    return pd.DataFrame({"letter": list(LETTERS), "predicted": pred, "answer": ans,
                         "predicted_share": pred / max(pred.sum(), 1), "answer_share": ans / max(ans.sum(), 1),
                         "predicted_ci_low": [c[0] for c in ci], "predicted_ci_high": [c[1] for c in ci]})


def letter_recall(df: pd.DataFrame, credit: str = "credit") -> pd.DataFrame:
    """Per answer letter (original order): questions keyed there, credit earned, recall with a Wilson interval."""
    score = credit if credit in df else "correct"
    rows = []
    for j, letter in enumerate(LETTERS):
        part = df[df["answer"] == j]
        k = float(part[score].sum())
        rows.append({"letter": letter, "n": len(part), "correct": k,
                     **dict(zip(("recall", "ci_low", "ci_high"), _rate(k, len(part))))})
    return pd.DataFrame(rows)


def letters_all_orders(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted letters pooled over the four cyclic orders, where each letter is the key of exactly a quarter:
    any share away from 0.25 is position preference. Intervals treat the 4 n choices as independent (optimistic)."""
    preds = np.concatenate([df["pred"].to_numpy()] + [df[f"pred_r{k}"].to_numpy() for k in (1, 2, 3)])
    counts = np.bincount(preds, minlength=4)[:4]
    ci = [wilson_interval(int(k), len(preds)) for k in counts]
    return pd.DataFrame({"letter": list(LETTERS), "predicted": counts, "predicted_share": counts / len(preds),
                         "ci_low": [c[0] for c in ci], "ci_high": [c[1] for c in ci]})


def accuracy_summary(preds: pd.DataFrame, n_bins: int = 10) -> dict[str, Any]:
    """Accuracy with a 95 % Wilson interval, breakdowns, position bias and calibration of a predictions frame.

    Keys: n, correct (credit: 1/k per k-way tie), accuracy, ci_low, ci_high, truncated, by_subject / by_tier /
    by_choice_type (DataFrames: n, correct, accuracy, ci_low, ci_high), letters (:func:`letter_distribution`),
    letter_recall (:func:`letter_recall`) and flat recall_<L>, predicted_share_<L>, position_bias_pvalue
    (chi-square of predicted letters against the answer-key shares), ties; where ``prob`` exists: mean_confidence,
    ece (equal-width bins over the chosen letter's normalized probability) and reliability (plot data).
    rotations (whether the frame has rotation columns); with them (``score_choices(rotations=True)``): circular_accuracy,
    debiased_accuracy (each with _ci_low / _ci_high), ties_all_orders, debiased_ties, letters_all_orders and flat
    predicted_share_all_orders_<L>.
    """
    score = "credit" if "credit" in preds else "correct"
    k, n = float(preds[score].sum()), len(preds)
    low, high = wilson_interval(k, n)
    out: dict[str, Any] = {"n": n, "correct": k, "accuracy": k / n if n else float("nan"), "ci_low": low,
                           "ci_high": high, "truncated": int(preds.get("truncated", pd.Series(dtype=bool)).sum())}
    for col in ("subject", "tier", "choice_type"):
        if col in preds:
            out[f"by_{col}"] = grouped_accuracy(preds, col, correct=score)
    letters = letter_distribution(preds)
    out["letters"] = letters
    recall = letter_recall(preds, score)
    out["letter_recall"] = recall
    out.update({f"recall_{r.letter}": r.recall for r in recall.itertuples()})
    out.update({f"predicted_share_{r.letter}": r.predicted_share for r in letters.itertuples()})
    expected = letters["answer_share"].to_numpy() * letters["predicted"].sum()
    ok = expected.sum() > 0 and (expected > 0).all()
    if ok:
        from scipy.stats import chisquare

        out["position_bias_pvalue"] = float(chisquare(letters["predicted"], expected).pvalue)
    else:
        out["position_bias_pvalue"] = float("nan")
    if "parsed" in preds:
        out["unparseable"] = int((~preds["parsed"]).sum())
    if "tied" in preds:
        out["ties"] = int(preds["tied"].sum())
    out["rotations"] = "circular_credit" in preds
    if out["rotations"]:
        for name in ("circular", "debiased"):
            rate = _rate(float(preds[f"{name}_credit"].sum()), n)
            out.update(zip((f"{name}_accuracy", f"{name}_ci_low", f"{name}_ci_high"), rate))
        out["ties_all_orders"] = int(preds["ties_in_orders"].sum())
        out["debiased_ties"] = int(preds["debiased_tied"].sum())
        pooled = letters_all_orders(preds)
        out["letters_all_orders"] = pooled
        out.update({f"predicted_share_all_orders_{r.letter}": r.predicted_share for r in pooled.itertuples()})
    if "prob" in preds:
        out["mean_confidence"] = float(preds["prob"].mean())
        out["ece"] = expected_calibration_error(preds["prob"], preds["correct"], n_bins)
        out["reliability"] = reliability_curve(preds["prob"], preds["correct"], n_bins)
    return out


# ---- cost ------------------------------------------------------------------------------------------------------

def _rss() -> int | None:
    try:
        import psutil
    except ImportError:  # psutil is optional on GPU machines
        return None
    return psutil.Process().memory_info().rss


def _conditions(model, encoded: list[dict]) -> dict[str, Any]:
    import transformers

    from medcore.models import describe_model

    device = _input_device(model)
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
    """Batch-1 latency, throughput per batch size and peak memory of :func:`score_choices`'s forward pass.

    Latency: ``n_latency`` questions one at a time after ``warmup`` untimed ones (median and p90, ms).
    Throughput: all ``records`` in length-sorted batches of each size after one untimed batch (questions/s).
    Timings synchronize CUDA. Peak memory: :class:`medcore.measure.PeakMemory` over the timed passes (the CUDA
    allocator's peak on GPU, the process's peak resident set on CPU). Answer keys not needed.
    """
    records = list(records)
    letter_ids, pad_id = answer_token_ids(tokenizer), _pad_id(tokenizer)
    encoded = [encode_for_scoring(r, tokenizer, max_length) for r in records]
    device = _input_device(model)
    cuda = device.type == "cuda"

    def run(idx: list[int]) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _letter_logprobs(model, [encoded[i] for i in idx], letter_ids, pad_id)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    memory = PeakMemory(device).start()
    with _eval_mode(model):
        for i in range(min(warmup, len(encoded))):
            run([i])
        latency = [run([i]) * 1000 for i in range(min(n_latency, len(encoded)))]
        throughput = []
        for bs in batch_sizes:
            batches = _sorted_batches([e["length"] for e in encoded], bs)
            run(batches[len(batches) // 2])
            seconds = sum(run(b) for b in batches)
            throughput.append({"batch_size": bs, "qps": len(encoded) / seconds, "seconds": seconds})
    best = max(throughput, key=lambda t: t["qps"])
    return {"latency_ms_median": statistics.median(latency), "latency_ms_p90": float(np.percentile(latency, 90)),
            "latency_n": len(latency), "throughput": throughput, "best_batch_size": best["batch_size"],
            "best_qps": best["qps"], **memory.read(),
            "conditions": _conditions(model, encoded)}
