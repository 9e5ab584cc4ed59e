"""The MedMCQA prompt, answer-only labels and token-budget batching.

The prompt is lm-evaluation-harness's `medmcqa` task, so zero-shot numbers are comparable with it:

    Question: <question>
    Choices:
    A. <opa>
    B. <opb>
    C. <opc>
    D. <opd>
    Answer:

and the continuation is " A" .. " D" (the harness's default target delimiter is one space).
Training puts the loss on that one answer token only (optionally also on the explanation);
scoring reads the four letter log-probabilities at the last prompt position.
"""
from __future__ import annotations

import numbers
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

LETTERS = ("A", "B", "C", "D")
IGNORE_INDEX = -100


def format_prompt(question: str, options: Sequence[str]) -> str:
    lines = [f"Question: {question}", "Choices:"]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return "\n".join(lines) + "\nAnswer:"


def answer_token_ids(tokenizer) -> list[int]:
    """Ids of " A".." D"; each must be a single token, or one-pass scoring would be wrong."""
    ids = []
    for letter in LETTERS:
        toks = tokenizer.encode(" " + letter, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"tokenizer splits {' ' + letter!r} into {len(toks)} tokens {toks}; one-pass scoring needs one")
        ids.append(toks[0])
    return ids


def _encode_prompt(tokenizer, question: str, options: Sequence[str]) -> list[int]:
    ids = tokenizer.encode(format_prompt(question, options), add_special_tokens=False)
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


class PromptTooLongError(ValueError):
    """The four choices and ``Answer:`` alone exceed the token limit; truncating the question cannot help."""

    def __init__(self, limit: int, record_id: str | None = None):
        self.limit, self.record_id = limit, record_id
        where = f"record {record_id!r}: " if record_id is not None else ""
        super().__init__(f"{where}the choices alone take more than {limit} tokens; raise data.max_length "
                         "(or load with on_invalid='skip' to drop such records)")


def encode_prompt(tokenizer, question: str, options: Sequence[str], max_length: int, reserve: int = 1) -> tuple[list[int], bool]:
    """Prompt ids no longer than `max_length - reserve`; cuts the question, never the choices or `Answer:`.

    Returns (ids, truncated). Raises :class:`PromptTooLongError` if even an empty question does not fit.
    """
    limit = max_length - reserve
    ids = _encode_prompt(tokenizer, question, options)
    if len(ids) <= limit:
        return ids, False
    q_ids = tokenizer.encode(question, add_special_tokens=False)
    keep = len(q_ids) - (len(ids) - limit)
    while keep > 0:
        ids = _encode_prompt(tokenizer, tokenizer.decode(q_ids[:keep]).rstrip() + " …", options)
        if len(ids) <= limit:
            return ids, True
        keep -= max(1, len(ids) - limit)
    raise PromptTooLongError(limit)


def check_record(record: dict[str, Any], need_answer: bool = False) -> None:
    """Raise ValueError naming the record id if it cannot be turned into a prompt (records built in code skip the
    checks of ``data.load_medmcqa``; a bad one must not surface as an IndexError inside tokenization or torch)."""
    rid = record.get("id")
    question, options, answer = record.get("question"), record.get("options"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"record {rid!r}: empty_question: the question is missing or empty")
    opts = list(options) if options is not None and not isinstance(options, (str, bytes, dict)) else None
    if opts is None or len(opts) != 4 or not all(isinstance(o, str) and o.strip() for o in opts):
        raise ValueError(f"record {rid!r}: missing_option: options must be four non-empty strings, got {options!r}")
    if answer is None and need_answer:
        raise ValueError(f"record {rid!r} has no answer; it cannot be used for training")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, numbers.Integral)
                               or not 0 <= answer <= 3):
        raise ValueError(f"record {rid!r}: answer_out_of_range: answer {answer!r} is not an integer 0-3")


def _encode_record_prompt(record: dict[str, Any], tokenizer, max_length: int, reserve: int) -> tuple[list[int], bool]:
    try:
        return encode_prompt(tokenizer, record["question"], record["options"], max_length, reserve)
    except PromptTooLongError as err:
        raise PromptTooLongError(err.limit, record.get("id")) from None


def encode_example(record: dict[str, Any], tokenizer, max_length: int, letter_ids: Sequence[int] | None = None,
                   with_explanation: bool = False) -> dict[str, Any]:
    """Tokenize one record for training: labels only on the answer letter (and the explanation if asked)."""
    check_record(record, need_answer=True)
    letter_ids = letter_ids or answer_token_ids(tokenizer)
    answer = record["answer"]
    prompt, truncated = _encode_record_prompt(record, tokenizer, max_length, reserve=1)
    input_ids = prompt + [letter_ids[answer]]
    labels = [IGNORE_INDEX] * len(prompt) + [letter_ids[answer]]
    explanation = record.get("explanation")
    room = max_length - len(input_ids) - 1  # one kept for EOS, so the example never exceeds max_length
    if with_explanation and explanation and room > 0:
        extra = tokenizer.encode("\nExplanation: " + explanation.strip(), add_special_tokens=False)[:room]
        if tokenizer.eos_token_id is not None:
            extra = extra + [tokenizer.eos_token_id]
        input_ids += extra
        labels += extra
    return {"input_ids": input_ids, "labels": labels, "length": len(input_ids), "truncated": truncated}


def encode_for_scoring(record: dict[str, Any], tokenizer, max_length: int) -> dict[str, Any]:
    check_record(record)
    ids, truncated = _encode_record_prompt(record, tokenizer, max_length, reserve=0)
    return {"input_ids": ids, "length": len(ids), "truncated": truncated}


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int = 1_000_000,
                         shuffle: bool = False, seed: int = 0) -> list[list[int]]:
    """Group example indices into batches whose padded size (rows x longest row) fits `token_budget`.

    Examples are sorted by length so little padding is wasted; this is the "dynamic batch size".
    With `shuffle`, the order of whole batches (not their contents) is shuffled with `seed`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (longest * (len(current) + 1) > token_budget or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        if lengths[i] > token_budget:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the token budget {token_budget}")
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


@dataclass
class Collator:
    """Right-pads input_ids/labels of a list of encoded examples into tensors."""

    pad_token_id: int

    def __call__(self, features: Iterable[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = list(features)
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            mask[row, :n] = 1
            if "labels" in f:
                labels[row, :n] = torch.tensor(f["labels"])
        batch = {"input_ids": ids, "attention_mask": mask}
        if any("labels" in f for f in features):
            batch["labels"] = labels
        return batch
