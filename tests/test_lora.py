"""LoRA presets, attaching to a 4-bit model without casting the embedding, save/load and the bf16 merge."""
import numpy as np
import peft
import pytest
import torch

from medcore import lora, models, quantize
from medcore.config import LoraConfig, QuantConfig

TINY = "random:tiny-gemma3"
IDS = torch.arange(30).reshape(2, 15) + 10


def _randomize_b(model, std=0.05):
    """LoRA B starts at zero (the adapter is a no-op); give it values so comparisons mean something."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)


@pytest.mark.parametrize("targets,expected", [
    ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    ("mlp", {"gate_proj", "up_proj", "down_proj"}),
    ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_targets_and_trainable_count(targets, expected):
    model = lora.attach_adapter(models.load_model(TINY, dtype=torch.float32), LoraConfig(r=4, targets=targets),
                                quantized=False)
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == expected
    expected_trainable = sum(4 * (m.in_features + m.out_features) for n, m in model.named_modules()
                             if isinstance(m, peft.tuners.lora.LoraLayer))
    report = lora.trainable_parameters(model)
    assert report["trainable"] == expected_trainable
    assert report["percent"] == pytest.approx(100 * expected_trainable / report["total"])


def test_methods():
    assert lora.peft_config(LoraConfig(method="dora")).use_dora
    assert lora.peft_config(LoraConfig(method="rslora")).use_rslora
    plain = lora.peft_config(LoraConfig(method="lora", r=8, alpha=16, dropout=0.1))
    assert not plain.use_dora and not plain.use_rslora and (plain.r, plain.lora_alpha, plain.lora_dropout) == (8, 16, 0.1)
    base = models.load_model(TINY, dtype=torch.float32)
    assert lora.attach_adapter(base, LoraConfig(method="none"), quantized=False) is base


def test_kbit_attach_keeps_embedding_bf16_and_counts_logical_parameters():
    model = quantize.load_quantized(TINY, QuantConfig("nf4", True), device="cpu")  # non-quantized parts bf16
    total_before = lora.trainable_parameters(model)["total"]
    assert total_before == models.describe_model(model)["params_total"]
    model = lora.attach_adapter(model, LoraConfig(r=4), quantized=True)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16  # peft's kbit prep would make it fp32
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert model.get_input_embeddings()(IDS).requires_grad  # input grads on, for checkpointed layers
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_saved_adapter_reloads_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = lora.attach_adapter(models.load_model(TINY, dtype=torch.float32), LoraConfig(r=4, dropout=0.0),
                                quantized=False)
    _randomize_b(model)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(models.load_model(TINY, dtype=torch.float32), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, before, rtol=0, atol=0)


def test_merged_bf16_matches_base_plus_adapter(tmp_path):
    """Within bf16 tolerance: no further from base + adapter than bf16 itself is from the fp32 computation."""
    torch.manual_seed(0)
    model = lora.attach_adapter(models.load_model(TINY, dtype=torch.bfloat16), LoraConfig(r=4, dropout=0.0),
                                quantized=False)
    _randomize_b(model)
    model.save_pretrained(tmp_path / "adapter")
    out = lora.merge_for_export(TINY, tmp_path / "adapter", tmp_path / "merged")
    merged = models.load_model(f"local:{out}", dtype=torch.bfloat16).eval()
    assert merged.dtype == torch.bfloat16 and (out / "tokenizer.json").is_file()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    fp32 = peft.PeftModel.from_pretrained(models.load_model(TINY, dtype=torch.float32), tmp_path / "adapter")
    base = models.load_model(TINY, dtype=torch.float32)
    with torch.no_grad():
        expected, got, exact, plain = (m.eval()(input_ids=IDS).logits.float() for m in (model, merged, fp32, base))
    bf16_noise = (expected - exact).abs().max().item()
    assert (exact - plain).abs().max() > 10 * bf16_noise  # the adapter changes the outputs...
    torch.testing.assert_close(got, expected, rtol=0, atol=2 * bf16_noise)  # ...and the merge keeps that


def test_export_command_writes_a_plain_transformers_folder_that_scores_as_base_plus_adapter(tmp_path, dev_ds, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medcore import evaluate
    from medcore.__main__ import main

    torch.manual_seed(0)
    model = lora.attach_adapter(models.load_model(TINY, dtype=torch.bfloat16), LoraConfig(r=4, dropout=0.0),
                                quantized=False)
    _randomize_b(model)
    model.save_pretrained(tmp_path / "adapter")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    args = ["export", "--model", TINY, "--adapter", str(tmp_path / "adapter")]
    assert main(args + ["--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert main(args + ["--out", str(tmp_path / "merged")]) == 0

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no medcore, no peft
    assert merged.dtype == torch.bfloat16 and not any("lora" in n for n, _ in merged.named_parameters())
    records = dev_ds.select(range(20))
    expected = evaluate.score_choices(model, models.load_tokenizer(TINY), records, max_length=2048, progress=False)
    got = evaluate.score_choices(merged, AutoTokenizer.from_pretrained(tmp_path / "merged"), records,
                                 max_length=2048, progress=False)
    assert got["prompt_tokens"].tolist() == expected["prompt_tokens"].tolist()  # the saved tokenizer is the same
    assert got["pred"].tolist() == expected["pred"].tolist()
    # the log-probabilities: no further from base + adapter than bf16 base + adapter is from its float32 computation
    fp32 = peft.PeftModel.from_pretrained(models.load_model(TINY, dtype=torch.float32), tmp_path / "adapter")
    exact = evaluate.score_choices(fp32, models.load_tokenizer(TINY), records, max_length=2048, progress=False)
    columns = [f"logprob_{x}" for x in "ABCD"]
    bf16_noise = np.abs(expected[columns].to_numpy() - exact[columns].to_numpy()).max()
    np.testing.assert_allclose(got[columns].to_numpy(), expected[columns].to_numpy(), rtol=0, atol=2 * bf16_noise)
