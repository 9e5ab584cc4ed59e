"""Option orders: the four cyclic rotations that scoring reads, and the balanced shuffles that training reads.

An order is a tuple ``order`` of the four original option indices: letter ``j`` shows option ``order[j]``, and
the answer key moves to ``order.index(answer)``, so it always names the same option text.

- :func:`rotation` / :data:`ROTATIONS`: letter ``j`` shows option ``(j + k) % 4``. Over the four rotations each
  option sits once under each letter, which is what circular and permutation-debiased accuracy need.
- :func:`balanced_orders`: one random order per record for an epoch, chosen so that every letter is the answer
  equally often (counts differ by at most one; the letters that get the remainder are drawn at random). A model
  trained on them gains nothing from the letter prior of the key (MedMCQA's validation key is 32 % A).
- :class:`ShuffledOptions`: a training set that re-encodes every record with its epoch's order, for the Trainer.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from medcore.prompts import answer_token_ids, encode_example

log = logging.getLogger(__name__)


def rotation(k: int) -> tuple[int, ...]:
    return tuple((j + k) % 4 for j in range(4))


ROTATIONS = tuple(rotation(k) for k in range(4))


def reorder(record: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """The record with its options in ``order`` and the answer key remapped to the same option text."""
    order = tuple(order)
    if sorted(order) != [0, 1, 2, 3]:
        raise ValueError(f"option order {order!r} must be a permutation of 0, 1, 2, 3")
    out = {**record, "options": [record["options"][i] for i in order]}
    if record.get("answer") is not None:
        out["answer"] = order.index(record["answer"])
    return out


def balanced_orders(answers: Sequence[int], seed: int, epoch: int) -> list[tuple[int, ...]]:
    """One order per record for ``epoch``: the answer at a letter from a shuffled balanced sequence, the other
    three options in random order. The same (seed, epoch) gives the same orders (a resumed run sees them again)."""
    rng = np.random.default_rng([seed, epoch])
    n = len(answers)
    targets = np.concatenate([np.tile(np.arange(4), n // 4), rng.choice(4, n % 4, replace=False)])
    rng.shuffle(targets)
    orders = []
    for answer, target in zip(answers, targets.tolist()):
        others = [i for i in range(4) if i != answer]
        rng.shuffle(others)
        orders.append(tuple(others[:target] + [answer] + others[target:]))
    return orders


class ShuffledOptions(torch.utils.data.Dataset):
    """Encoded training examples whose option order changes every epoch (:func:`balanced_orders`).

    Reads like ``train.encode_dataset``'s result where the Trainer looks: ``ds[i]`` (id, input_ids, labels,
    length, truncated), ``ds["length"]``, ``ds["truncated"]``, ``column_names``, ``len(ds)``. Records that cannot
    be encoded raise, or with ``on_invalid="skip"`` are dropped and counted, as in ``encode_dataset``.
    ``length`` is each example's length in the original order, which the batches are built from once; an order
    that would make an example longer (a tokenizer that merges across lines; Gemma's does not) is replaced by the
    original order for that example and epoch, and counted in ``kept_original``. :meth:`set_epoch` switches
    orders; the Trainer's epoch callback calls it.
    """

    column_names = ["id", "input_ids", "labels", "length", "truncated"]

    def __init__(self, records: Iterable[dict], tokenizer, max_length: int, with_explanation: bool = False,
                 on_invalid: str = "raise", seed: int = 0):
        self.tokenizer, self.max_length, self.with_explanation, self.seed = tokenizer, max_length, with_explanation, seed
        self.letter_ids = answer_token_ids(tokenizer)
        self.records, self.original, skipped = [], [], 0
        for i, record in enumerate(records):
            try:
                encoded = self._encode(record)
            except ValueError:
                if on_invalid != "skip":
                    raise
                skipped += 1
                continue
            self.records.append({**record, "id": str(record.get("id", i))})
            self.original.append(encoded)
        if skipped:
            log.warning("option-order augmentation: %d records skipped as unencodable", skipped)
        self.epoch, self.kept_original, self.examples = None, 0, []
        self.set_epoch(0)

    def _encode(self, record: dict) -> dict[str, Any]:
        return encode_example(record, self.tokenizer, self.max_length, self.letter_ids, self.with_explanation)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        orders = balanced_orders([r["answer"] for r in self.records], self.seed, epoch)
        self.examples, kept = [], 0
        for record, order, original in zip(self.records, orders, self.original):
            shuffled = reorder(record, order)
            encoded = self._encode(shuffled)
            if encoded["length"] > original["length"]:
                encoded, shuffled, kept = original, record, kept + 1
            self.examples.append({"id": record["id"], **encoded, "answer": shuffled["answer"]})
        self.epoch, self.kept_original = epoch, kept
        if kept:
            log.warning("option-order augmentation, epoch %d: %d examples kept their original order (a new order "
                        "would have made them longer)", epoch, kept)

    def answers(self) -> list[int]:
        """The answer letter (0-3) of every example in the current epoch's orders."""
        return [e["answer"] for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.column_names:
                raise KeyError(f"column {key!r}; columns: {', '.join(self.column_names)}")
            source = self.original if key in ("length", "truncated") else self.examples
            return [e[key] if key != "id" else r["id"] for e, r in zip(source, self.records)]
        example = self.examples[key]
        return {k: example[k] for k in self.column_names if k != "length"} | {"length": self.original[key]["length"]}
