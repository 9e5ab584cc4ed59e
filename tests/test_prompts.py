"""The harness prompt, answer-only labels, question-only truncation and token-budget batching."""
import random

import pytest

from medcore.models import load_tokenizer
from medcore.prompts import (IGNORE_INDEX, Collator, answer_token_ids, encode_example, encode_prompt,
                             format_prompt, token_budget_batches)

RECORD = {"id": "x1", "question": "Which nerve supplies the deltoid?", "answer": 2,
          "options": ["Radial", "Ulnar", "Axillary", "Median"], "explanation": "The axillary nerve (C5, C6)."}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("random:tiny-gemma")


def test_prompt_is_the_harness_medmcqa_format():
    # lm-evaluation-harness lm_eval/tasks/medmcqa/utils_medmcqa.py doc_to_text
    expected = ("Question: Which nerve supplies the deltoid?\nChoices:\nA. Radial\nB. Ulnar\n"
                "C. Axillary\nD. Median\nAnswer:")
    assert format_prompt(RECORD["question"], RECORD["options"]) == expected


def test_labels_only_on_the_answer_letter(tok):
    letters = answer_token_ids(tok)
    ex = encode_example(RECORD, tok, max_length=256, letter_ids=letters)
    labelled = [(i, t) for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX]
    assert labelled == [(len(ex["input_ids"]) - 1, letters[2])]
    assert ex["input_ids"][-1] == letters[2]


def test_explanation_labels_follow_the_answer(tok):
    ex = encode_example(RECORD, tok, max_length=256, with_explanation=True)
    n_labels = sum(t != IGNORE_INDEX for t in ex["labels"])
    assert n_labels > 3
    first = next(i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX)
    assert ex["input_ids"][first] == answer_token_ids(tok)[2]


def test_truncation_cuts_the_question_never_the_choices(tok):
    long = dict(RECORD, question="The patient presents with fever and cough. " * 60)
    full, cut = encode_prompt(tok, long["question"], long["options"], max_length=10_000)
    assert not cut
    ids, cut = encode_prompt(tok, long["question"], long["options"], max_length=120)
    assert cut and len(ids) <= 119
    text = tok.decode(ids)
    tail = "\nChoices:\nA. Radial\nB. Ulnar\nC. Axillary\nD. Median\nAnswer:"
    assert text.replace(" ", "").endswith(tail.replace(" ", ""))


def test_choices_too_long_is_a_clear_error(tok):
    rec = dict(RECORD, options=["word " * 200] * 4)
    with pytest.raises(ValueError, match="max_length"):
        encode_prompt(tok, rec["question"], rec["options"], max_length=64)


def test_token_budget_batches_fill_budget_and_cover_everything():
    rng = random.Random(0)
    lengths = [rng.randint(20, 300) for _ in range(500)]
    batches = token_budget_batches(lengths, token_budget=2048, max_batch_size=32, shuffle=True, seed=1)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(500))
    for b in batches:
        assert len(b) <= 32 and len(b) * max(lengths[i] for i in b) <= 2048
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # length sorting wastes little on padding
    assert batches == token_budget_batches(lengths, 2048, 32, shuffle=True, seed=1)
    assert batches != token_budget_batches(lengths, 2048, 32, shuffle=True, seed=2)


def test_example_longer_than_budget_is_refused():
    with pytest.raises(ValueError, match="token budget"):
        token_budget_batches([10, 5000], token_budget=4096)


def test_collator_pads_right_and_masks(tok):
    feats = [encode_example(RECORD, tok, 256), encode_example(dict(RECORD, question="Short?"), tok, 256)]
    batch = Collator(pad_token_id=tok.pad_token_id)(feats)
    n0, n1 = feats[0]["length"], feats[1]["length"]
    assert batch["input_ids"].shape == (2, max(n0, n1))
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"] != IGNORE_INDEX).sum().item() == 2
