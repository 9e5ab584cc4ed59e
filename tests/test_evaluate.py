"""Scoring: one forward pass per question chooses as the harness's four log-likelihood requests do."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model

from medcore.accuracy import accuracy_summary
from medcore.config import QuantConfig
from medcore.data import load_medmcqa
from medcore.evaluate import generate_choices, parse_letter, score_choices
from medcore.harness_reference import harness_loglikelihood_choices
from medcore.models import load_model, load_tokenizer
from medcore.option_order import ROTATIONS, reorder
from medcore.prompts import answer_token_ids, encode_for_scoring
from medcore.quantize import load_quantized

LP = [f"logprob_{c}" for c in "ABCD"]
LL = [f"loglik_{c}" for c in "ABCD"]
TINY = "random:tiny-gemma3"  # Gemma 3 layout: sliding-window layers (window 64) shorter than the prompts


def _dev(medmcqa_dir, n):
    return list(load_medmcqa(f"local:{medmcqa_dir}", "validation", limit=n))


def assert_same_choices(one: pd.DataFrame, ref: pd.DataFrame, atol: float):
    """Log-probs within atol; the same letter wherever the reference's top two are further apart than 2 atol."""
    a, b = one[LP].to_numpy(), ref[LL].to_numpy()
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)
    top2 = np.sort(b, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * atol
    assert clear.mean() > 0.8, "too many near-ties to compare choices"
    assert (one["pred"].to_numpy()[clear] == ref["pred"].to_numpy()[clear]).all()
    assert list(one["id"]) == list(ref["id"])


def test_one_pass_equals_four_pass(tiny, tok, questions):
    one = score_choices(tiny, tok, questions, batch_size=5, max_length=2048, progress=False)
    ref = harness_loglikelihood_choices(tiny, tok, questions)
    assert ref["single_token"].all() and not one["truncated"].any()
    assert (one["prompt_tokens"] == ref["context_tokens"]).all()  # same context encoding as the harness
    assert (one["pred"] == ref["pred"]).all()
    assert_same_choices(one, ref, atol=1e-4)


def test_softcapping_and_padding_follow_the_model_forward(tiny, tok, questions):
    tiny.config.final_logit_softcapping = 3.0  # Gemma-2 style; the reference uses the model's own forward
    try:
        one = score_choices(tiny, tok, questions[:6], batch_size=6, max_length=2048, progress=False)
        ref = harness_loglikelihood_choices(tiny, tok, questions[:6])
    finally:
        tiny.config.final_logit_softcapping = None
    assert_same_choices(one, ref, atol=1e-4)
    plain = score_choices(tiny, tok, questions[:6], batch_size=1, max_length=2048, progress=False)
    assert not np.allclose(one[LP], plain[LP], atol=1e-3)  # the cap changed something


def test_order_batch_size_and_mode(tiny, tok, questions):
    tiny.train()
    qs = questions[:8]
    a = score_choices(tiny, tok, qs, batch_size=1, max_length=2048, progress=False)
    assert tiny.training  # the caller's mode is restored
    tiny.eval()
    b = score_choices(tiny, tok, qs[::-1], batch_size=3, max_length=2048, progress=False)
    b = b.iloc[::-1].reset_index(drop=True)
    assert list(a["id"]) == [q["id"] for q in qs]
    np.testing.assert_allclose(a[LP], b[LP], atol=1e-4)
    assert set(a.columns) >= {"id", "subject", "tier", "choice_type", "answer", "pred", "correct", "prob",
                              "prompt_tokens", "truncated", *LP}
    assert a["prob"].between(0.25, 1).all() and (a["correct"] == (a["pred"] == a["answer"])).all()
    assert a["tier"].isin(["pre-clinical", "para-clinical", "clinical", "unknown"]).all()


def test_truncation_keeps_choices(tiny, tok, questions):
    df = score_choices(tiny, tok, questions, batch_size=4, max_length=400, progress=False)
    assert df["truncated"].sum() == 3 and (df["prompt_tokens"] <= 400).all()


def test_peft_lora_is_used(tiny, tok, questions):
    peft_model = get_peft_model(load_model(TINY, dtype=torch.float32),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    one = score_choices(peft_model, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    ref = harness_loglikelihood_choices(peft_model, tok, questions[:6])
    assert_same_choices(one, ref, atol=1e-4)
    base = score_choices(tiny, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    assert not np.allclose(one[LP], base[LP], atol=1e-3)


def test_nf4_quantized(tok, questions):
    model = load_quantized(TINY, QuantConfig(precision="nf4"), device="cpu")
    ref = harness_loglikelihood_choices(model, tok, questions[:6])
    single = score_choices(model, tok, questions[:6], batch_size=1, max_length=2048, progress=False)
    assert_same_choices(single, ref, atol=1e-3)
    padded = score_choices(model, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    np.testing.assert_allclose(padded[LP], ref[LL], atol=0.03)  # bf16: padded batches round differently


def test_keyless_split_is_refused(tiny, tok, tmp_path):
    rec = {"id": "t1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "subject_name": "Anatomy"}
    (tmp_path / "test.json").write_text(json.dumps(rec) + "\n")
    test_split = load_medmcqa(f"local:{tmp_path}", "test")
    with pytest.raises(ValueError, match="answer key"):
        score_choices(tiny, tok, test_split, progress=False)
    with pytest.raises(ValueError, match="no answer key"):
        score_choices(tiny, tok, [{"question": "Q?", "options": list("abcd"), "answer": None}], progress=False)


def test_generation_scorer(tiny, tok, questions):
    assert [parse_letter(t) for t in (" B", "C.", "(D)", "Answer A", "none", " a")] == [1, 2, 3, 0, None, None]
    df = generate_choices(tiny, tok, questions[:2], max_new_tokens=2, max_length=2048, progress=False)
    assert len(df) == 2 and df.attrs["unparseable"] == int((df["pred"] < 0).sum())
    assert accuracy_summary(df)["unparseable"] == df.attrs["unparseable"]


@pytest.mark.slow
def test_one_pass_equals_four_pass_on_embedded_gemma(medmcqa_dir):
    """The real Gemma-3-270M (dequantized from its Q4_K_M GGUF) on real validation questions: in float32 exactly the
    harness's choices; in bf16 no ties, and the harness's letter wherever its own bf16 logits leave one clear."""
    tok = load_tokenizer("embedded:gemma-3-270m")
    qs = _dev(medmcqa_dir, 32)
    model = load_model("embedded:gemma-3-270m", dtype=torch.float32)
    ref = harness_loglikelihood_choices(model, tok, qs[:16])
    assert ref["single_token"].all(), "the harness tokenizes ' A' after 'Answer:' differently"
    exact = score_choices(model, tok, qs[:16], batch_size=8, max_length=1024, progress=False)
    assert (exact["prompt_tokens"] == ref["context_tokens"]).all()
    assert (exact["pred"] == ref["pred"]).all() and exact["tied"].sum() == 0
    gap = exact[LP].to_numpy() - ref[LL].to_numpy()
    # torch's CPU log_softmax over 262k logits is off by ~1e-4 (against float64; the chunked log-sum-exp is not):
    # one shift per question, the same for all four letters, so the letters' differences agree to rounding
    assert np.abs(gap).max() < 3e-4 and np.abs(gap - gap.mean(axis=1, keepdims=True)).max() < 2e-5
    del model
    model = load_model("embedded:gemma-3-270m", dtype=torch.bfloat16)
    ref = harness_loglikelihood_choices(model, tok, qs)
    top2 = np.sort(ref[LL].to_numpy(), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.13  # more than two bf16 roundings of logits below 32 (0.0625 each)
    single = score_choices(model, tok, qs, batch_size=1, max_length=1024, progress=False)
    assert single["tied"].sum() == 0
    np.testing.assert_allclose(single[LP], ref[LL], atol=0.15)  # the harness's bf16 logits round, ours do not
    assert clear.sum() >= 8 and (single["pred"][clear] == ref["pred"][clear]).all()
    padded = score_choices(model, tok, qs, batch_size=8, max_length=1024, progress=False)
    assert padded["tied"].sum() == 0  # padded batches round the bf16 hidden states differently
    np.testing.assert_allclose(padded[LP], ref[LL], atol=0.15)
    assert (padded["pred"] == ref["pred"]).mean() >= 0.9


def test_autocast_scoring_keeps_the_adapter_and_rounds_only(tok, questions):
    """bf16 autocast (the bench's faster scoring path) on a bf16 model with an fp32 LoRA adapter that moves the
    scores: the adapter still counts, and the scores move by bf16 rounding only."""
    torch.manual_seed(0)
    model = get_peft_model(load_model(TINY, dtype=torch.bfloat16),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # the adapter in float32, as peft keeps it for training
    plain = score_choices(model, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    cast = score_choices(model, tok, questions[:6], batch_size=3, max_length=2048, progress=False, autocast=True)
    with model.disable_adapter():
        base = score_choices(model, tok, questions[:6], batch_size=3, max_length=2048, progress=False, autocast=True)
    moved = np.abs(plain[LP].to_numpy() - base[LP].to_numpy()).max()
    rounding = np.abs(plain[LP].to_numpy() - cast[LP].to_numpy()).max()
    assert moved > 0.1 and rounding < moved / 5, (moved, rounding)


def _nearly_tied_letters(model, tok) -> torch.Tensor:
    """Give the head's four letter rows one shared row that differs per letter in one element by about one bf16
    step: the letter logits then differ by far less than bf16's resolution at their size. Returns the rows."""
    ids = answer_token_ids(tok)
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        shared = weight[ids[0]].float() * 20
        for j, i in enumerate(ids):
            row = shared.clone()
            row[j] *= 1 + 2 ** -6
            weight[i] = row.to(weight.dtype)
        assert len({tuple(weight[i].tolist()) for i in ids}) == 4  # the bf16 rows do differ
    return weight[ids].detach().float()


def test_bf16_letter_logits_closer_than_bf16_resolution_do_not_tie(tok, questions):
    model = load_model(TINY, dtype=torch.bfloat16)
    rows = _nearly_tied_letters(model, tok)
    df = score_choices(model, tok, questions, batch_size=4, max_length=2048, progress=False)
    assert int(df["tied"].sum()) == 0
    # the choice is the largest of the four float32 logits of the (bf16) final hidden state
    enc = [encode_for_scoring(q, tok, 2048) for q in questions]
    with torch.inference_mode():
        hidden = torch.stack([model.model(input_ids=torch.tensor([e["input_ids"]])).last_hidden_state[0, -1]
                              for e in enc])
    exact = hidden.float() @ rows.T
    spacing = 2.0 ** (torch.floor(torch.log2(exact.abs().max(1).values)) - 7)  # between bf16 numbers of that size
    assert (exact.max(1).values - exact.min(1).values < spacing).all()
    assert list(df["pred"]) == exact.argmax(1).tolist()


class PromptReader(torch.nn.Module):
    """A stand-in causal LM whose preference is known exactly: it reads each prompt's options back from the text and
    puts its whole weight on the letter ``pick(options)`` names, whatever the order (``pick=None``: on no letter)."""

    def __init__(self, tok, pick):
        super().__init__()
        self.embed = torch.nn.Embedding(1, 1)
        self.config = SimpleNamespace(model_type="prompt-reader")
        self.tok, self.pick, self.letter_ids = tok, pick, answer_token_ids(tok)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, attention_mask, use_cache=False):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            if self.pick is None:  # no preference at all: the four letters tie
                continue
            options = re.findall(r"^[ABCD]\. (.*)$", self.tok.decode(ids[mask.bool()], skip_special_tokens=True), re.M)
            assert len(options) == 4
            logits[row, :, self.letter_ids[self.pick(options)]] = 8.0
        return SimpleNamespace(logits=logits)


def _keyed_questions(key_letters: str) -> list[dict]:
    """One question per letter of ``key_letters``; the right option's text ends in '*'."""
    return [{"id": f"q{i}", "question": f"Which option is right in question {i}?", "answer": "ABCD".index(letter),
             "options": [f"choice {j} of {i}" + ("*" if j == "ABCD".index(letter) else "") for j in range(4)]}
            for i, letter in enumerate(key_letters)]


def test_rotations_tell_a_letter_preference_from_knowing_the_answer(tok):
    qs = _keyed_questions("AAAAAAAABBBBBBCCCCDD")  # key shares 0.4, 0.3, 0.2, 0.1
    first = score_choices(PromptReader(tok, lambda options: 0), tok, qs, batch_size=8, progress=False, rotations=True)
    s = accuracy_summary(first)
    assert s["accuracy"] == pytest.approx(0.4) and s["ties"] == 0
    assert s["circular_accuracy"] == 0
    assert s["debiased_accuracy"] == 0.25 and s["debiased_ties"] == len(qs)  # what an unbiased guesser gets
    assert s["recall_A"] == 1 and s["recall_B"] == s["recall_C"] == s["recall_D"] == 0
    assert s["predicted_share_A"] == 1 and s["predicted_share_all_orders_A"] == 1
    assert (first["pred_r1"] == 0).all() and (first["pred_r3"] == 0).all()

    knows = PromptReader(tok, lambda options: next(j for j, o in enumerate(options) if o.endswith("*")))
    right = score_choices(knows, tok, qs, batch_size=8, progress=False, rotations=True)
    s = accuracy_summary(right)
    assert s["accuracy"] == s["circular_accuracy"] == s["debiased_accuracy"] == 1
    assert [s[f"recall_{c}"] for c in "ABCD"] == [1, 1, 1, 1]
    assert [s[f"predicted_share_all_orders_{c}"] for c in "ABCD"] == [0.25] * 4  # each letter keyed a quarter
    assert (right["pred_r1"] == (right["answer"] - 1) % 4).all()  # order 1: letter j shows option j + 1
    assert s["circular_ci_low"] < 1 == s["circular_ci_high"]


def test_a_tie_gives_each_tied_letter_equal_credit(tok):
    qs = _keyed_questions("ABCD" * 10)
    uniform = PromptReader(tok, None)
    df = score_choices(uniform, tok, qs, batch_size=8, progress=False)
    s = accuracy_summary(df)
    assert df["tied"].all() and s["ties"] == len(qs)
    assert s["accuracy"] == 0.25 and (df["credit"] == 0.25).all()
    assert df["pred"].nunique() > 1  # a tie does not always go to A
    again = score_choices(uniform, tok, qs[::-1], batch_size=3, progress=False).iloc[::-1]
    assert list(again["pred"]) == list(df["pred"])  # drawn from the question id: order and batches do not matter


def test_fp32_precision_matches_the_harness_in_every_order(tok, questions):
    model = load_quantized(TINY, QuantConfig(precision="fp32"), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    qs = questions[:6]
    df = score_choices(model, tok, qs, batch_size=5, max_length=2048, progress=False, rotations=True)
    assert df["tied"].sum() == 0
    for k, order in enumerate(ROTATIONS):
        ref = harness_loglikelihood_choices(model, tok, [reorder(q, order) for q in qs])
        cols = LP if k == 0 else [f"logprob_r{k}_{c}" for c in "ABCD"]
        np.testing.assert_allclose(df[cols].to_numpy(), ref[LL].to_numpy(), atol=1e-5, rtol=0)
        assert list(df["pred" if k == 0 else f"pred_r{k}"]) == list(ref["pred"])
