"""Option orders: rotations for scoring, balanced per-epoch shuffles for training, and their hook into train()."""
import collections

import datasets
import pytest
import torch
from transformers import TrainerCallback

from medcore import lora, models, train
from medcore.config import LoraConfig, RunConfig
from medcore.option_order import ROTATIONS, ShuffledOptions, balanced_orders, reorder
from medcore.prompts import LETTERS

TINY = "random:tiny-gemma3"


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(TINY)


@pytest.fixture(scope="module")
def train_sample(medmcqa_dir):
    """MedMCQA training questions with their own key (1,619; the key is 30 % A, 19 % D)."""
    from medcore.data import load_medmcqa

    return list(load_medmcqa(f"local:{medmcqa_dir / 'train_sample.jsonl'}", "train"))


def test_rotations_put_every_option_once_under_every_letter():
    assert ROTATIONS[0] == (0, 1, 2, 3) and ROTATIONS[1] == (1, 2, 3, 0)
    for option in range(4):
        assert sorted(order.index(option) for order in ROTATIONS) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="permutation"):
        reorder({"options": list("abcd"), "answer": 0}, (0, 0, 1, 2))


@pytest.mark.parametrize("n", [1619, 400])
def test_every_letter_is_the_answer_equally_often_and_names_the_same_text(train_sample, n):
    recs = train_sample[:n]
    assert collections.Counter(r["answer"] for r in recs)[0] > 1.15 * n / 4  # the key itself is skewed towards A
    for epoch in range(3):
        orders = balanced_orders([r["answer"] for r in recs], seed=0, epoch=epoch)
        moved = [reorder(r, o) for r, o in zip(recs, orders)]
        counts = collections.Counter(m["answer"] for m in moved)
        assert max(counts.values()) - min(counts.values()) <= (0 if n % 4 == 0 else 1) and len(counts) == 4
        for r, m in zip(recs, moved):
            assert m["options"][m["answer"]] == r["options"][r["answer"]]
            assert sorted(m["options"]) == sorted(r["options"])
    assert balanced_orders([0] * 8, 0, 0) == balanced_orders([0] * 8, 0, 0)  # a resumed run sees the same orders
    assert balanced_orders([0] * 8, 0, 0) != balanced_orders([0] * 8, 0, 1)  # a fresh order each epoch


def test_shuffled_training_set_labels_the_letter_that_shows_the_answer(tok, train_sample):
    recs = train_sample[:40]
    ds = ShuffledOptions(recs, tok, 256, seed=3)
    assert len(ds) == 40 and ds.column_names == ["id", "input_ids", "labels", "length", "truncated"]
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert collections.Counter(ds.answers()) == {0: 10, 1: 10, 2: 10, 3: 10}
        for i, rec in enumerate(recs):
            ex = ds[i]
            text = tok.decode(ex["input_ids"], skip_special_tokens=True)
            letter = tok.decode([ex["labels"][-1]]).strip()
            assert text.endswith(f"Answer: {letter}")
            shown = dict(line.split(". ", 1) for line in text.splitlines() if line[:2] in ("A.", "B.", "C.", "D."))
            assert shown[letter] == rec["options"][rec["answer"]]
            assert len(ex["input_ids"]) <= ds["length"][i]
        seen.append(ds.answers())
    assert seen[0] != seen[1] and ds["length"] == [ds[i]["length"] for i in range(40)]


def test_train_reshuffles_the_options_every_epoch_and_can_be_turned_off(tmp_path, tok, train_sample):
    recs = datasets.Dataset.from_list(train_sample[:8])

    class SeenAnswers(TrainerCallback):
        def __init__(self):
            self.by_epoch, self.kinds = {}, set()

        def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
            ds = train_dataloader.dataset
            self.kinds.add(type(ds).__name__)
            if hasattr(ds, "answers"):
                self.by_epoch[ds.epoch] = ds.answers()

    cfg = RunConfig()
    cfg.data.max_length = 512
    cfg.lora = LoraConfig(r=4, alpha=8)
    for key, value in dict(epochs=3, token_budget=4096, max_batch_size=8, logging_steps=1, eval_steps=100,
                           save_steps=100, gradient_checkpointing=False).items():
        setattr(cfg.train, key, value)
    model = lora.attach_adapter(models.load_model(TINY, dtype=torch.float32), cfg.lora, quantized=False)
    seen = SeenAnswers()
    train.train(cfg, model, tok, recs, None, tmp_path / "on", callbacks=[seen])
    assert sorted(seen.by_epoch) == [0, 1, 2]
    assert len({tuple(a) for a in seen.by_epoch.values()}) == 3
    assert all(collections.Counter(a) == {0: 2, 1: 2, 2: 2, 3: 2} for a in seen.by_epoch.values())

    cfg.data.shuffle_options = False
    plain = SeenAnswers()
    train.train(cfg, model, tok, recs, None, tmp_path / "off", callbacks=[plain])
    assert seen.kinds == {"ShuffledOptions"} and plain.kinds == {"Dataset"}  # off: the original order, encoded once


def test_a_rotation_moves_the_key_with_its_option():
    rec = {"id": "x", "question": "Q?", "options": ["w", "x", "y", "z"], "answer": 2}
    answers = [reorder(rec, order)["answer"] for order in ROTATIONS]
    assert answers == [2, 1, 0, 3] and [LETTERS[a] for a in answers] == ["C", "B", "A", "D"]
