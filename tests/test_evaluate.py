"""Scoring: one forward pass per question chooses as the harness's four log-likelihood requests do."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from medcore.evaluate import (accuracy_summary, generate_choices, harness_encode_pair, harness_loglikelihood_choices,
                              last_position_logprobs, measure_cost, parse_letter, score_choices)
from medcore.models import load_model, load_tokenizer

LP = [f"logprob_{c}" for c in "ABCD"]
LL = [f"loglik_{c}" for c in "ABCD"]
TINY = "random:tiny-gemma3"  # Gemma 3 layout: sliding-window layers (window 64) shorter than the prompts


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def tiny(tok):
    return load_model(TINY, dtype=torch.float32)


def _dev(medmcqa_dir, n):
    from medcore.data import load_medmcqa

    return list(load_medmcqa(f"local:{medmcqa_dir}", "validation", limit=n))


@pytest.fixture(scope="module")
def questions(medmcqa_dir):
    return _dev(medmcqa_dir, 12)


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


def test_full_vocab_logprobs_match_full_forward(tiny, tok):
    ids = torch.tensor([[2, 40, 50, 60, 70], [2, 41, 51, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    with torch.inference_mode():
        lp = last_position_logprobs(tiny, ids, mask)
        full0 = torch.log_softmax(tiny(input_ids=ids[:1]).logits[0, -1].float(), -1)
        full1 = torch.log_softmax(tiny(input_ids=ids[1:, :3]).logits[0, -1].float(), -1)
    assert lp.shape == (2, tiny.config.vocab_size)
    torch.testing.assert_close(lp, torch.stack([full0, full1]), atol=1e-5, rtol=0)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2))


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
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load_model(TINY, dtype=torch.float32),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    one = score_choices(peft_model, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    ref = harness_loglikelihood_choices(peft_model, tok, questions[:6])
    assert_same_choices(one, ref, atol=1e-4)
    base = score_choices(tiny, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    assert not np.allclose(one[LP], base[LP], atol=1e-3)


def test_nf4_quantized(tok, questions):
    from medcore.config import QuantConfig
    from medcore.quantize import load_quantized

    model = load_quantized(TINY, QuantConfig(precision="nf4"), device="cpu")
    ref = harness_loglikelihood_choices(model, tok, questions[:6])
    single = score_choices(model, tok, questions[:6], batch_size=1, max_length=2048, progress=False)
    assert_same_choices(single, ref, atol=1e-3)
    padded = score_choices(model, tok, questions[:6], batch_size=3, max_length=2048, progress=False)
    np.testing.assert_allclose(padded[LP], ref[LL], atol=0.03)  # bf16: padded batches round differently


def test_keyless_split_is_refused(tiny, tok, tmp_path):
    from medcore.data import load_medmcqa

    rec = {"id": "t1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "subject_name": "Anatomy"}
    (tmp_path / "test.json").write_text(json.dumps(rec) + "\n")
    test_split = load_medmcqa(f"local:{tmp_path}", "test")
    with pytest.raises(ValueError, match="answer key"):
        score_choices(tiny, tok, test_split, progress=False)
    with pytest.raises(ValueError, match="no answer key"):
        score_choices(tiny, tok, [{"question": "Q?", "options": list("abcd"), "answer": None}], progress=False)


def test_harness_encode_pair_moves_trailing_space(tok):
    ctx, cont = harness_encode_pair(tok, "Answer: ", "A")
    ctx2, cont2 = harness_encode_pair(tok, "Answer:", " A")
    assert (ctx, cont) == (ctx2, cont2) and len(cont) == 1 and ctx[0] == tok.bos_token_id


def test_accuracy_summary_on_synthetic_predictions():
    rng = np.random.default_rng(0)
    n = 4000
    prob = rng.uniform(0.25, 1.0, n)
    answer = rng.integers(0, 4, n)
    correct = rng.random(n) < prob
    pred = np.where(correct, answer, (answer + rng.integers(1, 4, n)) % 4)
    df = pd.DataFrame({"subject": rng.choice(["Anatomy", "Surgery", "Pharmacology"], n), "answer": answer,
                       "pred": pred, "correct": correct, "prob": prob, "choice_type": None, "truncated": False})
    df["tier"] = df["subject"].map({"Anatomy": "pre-clinical", "Surgery": "clinical", "Pharmacology": "para-clinical"})
    s = accuracy_summary(df)
    assert s["n"] == n and s["accuracy"] == pytest.approx(correct.mean())
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(proportion_confint(correct.sum(), n, method="wilson"))
    assert s["ece"] < 0.03  # calibrated by construction
    assert s["by_tier"]["n"].sum() == n and list(s["by_choice_type"]["choice_type"]) == ["unknown"]
    sub = s["by_subject"].set_index("subject").loc["Surgery"]
    assert sub["accuracy"] == pytest.approx(df[df.subject == "Surgery"]["correct"].mean())
    assert s["letters"]["answer"].sum() == n and s["position_bias_pvalue"] > 0.001
    assert s["reliability"]["n"].sum() == n
    biased = df.assign(pred=0, correct=df["answer"] == 0)
    assert accuracy_summary(biased)["position_bias_pvalue"] < 1e-10


def test_measure_cost(tiny, tok, questions):
    cost = measure_cost(tiny, tok, questions[3:7], batch_sizes=(1, 2), n_latency=3, warmup=1, max_length=2048)
    assert cost["latency_n"] == 3 and 0 < cost["latency_ms_median"] <= cost["latency_ms_p90"]
    assert [t["batch_size"] for t in cost["throughput"]] == [1, 2] and cost["best_qps"] > 0
    assert cost["peak_memory_bytes"] > 0 and cost["conditions"]["device"] == "cpu"
    assert cost["conditions"]["dtype"] == "float32" and cost["conditions"]["mean_prompt_tokens"] > 50


def test_generation_scorer(tiny, tok, questions):
    assert [parse_letter(t) for t in (" B", "C.", "(D)", "Answer A", "none", " a")] == [1, 2, 3, 0, None, None]
    df = generate_choices(tiny, tok, questions[:2], max_new_tokens=2, max_length=2048, progress=False)
    assert len(df) == 2 and df.attrs["unparseable"] == int((df["pred"] < 0).sum())
    assert accuracy_summary(df)["unparseable"] == df.attrs["unparseable"]


@pytest.mark.slow
def test_one_pass_equals_four_pass_on_embedded_gemma(medmcqa_dir):
    """The real Gemma-3-270M (bf16, dequantized from its Q4_K_M GGUF) on 32 real validation questions."""
    tok = load_tokenizer("embedded:gemma-3-270m")
    model = load_model("embedded:gemma-3-270m", dtype=torch.bfloat16)
    qs = _dev(medmcqa_dir, 32)
    ref = harness_loglikelihood_choices(model, tok, qs)
    assert ref["single_token"].all(), "the harness tokenizes ' A' after 'Answer:' differently"
    single = score_choices(model, tok, qs, batch_size=1, max_length=1024, progress=False)
    assert (single["prompt_tokens"] == ref["context_tokens"]).all()
    assert (single["pred"] == ref["pred"]).all()  # bf16 ties included: both take the first letter
    assert_same_choices(single, ref, atol=1e-3)
    padded = score_choices(model, tok, qs, batch_size=8, max_length=1024, progress=False)
    np.testing.assert_allclose(padded[LP], ref[LL], atol=0.15)  # bf16: padded batches round differently
    assert (padded["pred"] == ref["pred"]).mean() >= 0.9


def test_autocast_scoring_keeps_the_adapter_and_rounds_only(tok, questions):
    """bf16 autocast (the bench's faster scoring path) on a bf16 model with an fp32 LoRA adapter that moves the
    scores: the adapter still counts, and the scores move by bf16 rounding only."""
    from peft import LoraConfig, get_peft_model

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
