"""Quantization presets, the AVX512-BF16 CPU workaround, measured footprint and quantization error (tiny models)."""
import bitsandbytes as bnb
import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM

from medcore import models, quantize
from medcore.config import LoraConfig, QuantConfig
from medcore.lora import attach_adapter

TINY = "random:tiny-gemma3"


def nf4(double_quant=True):
    return QuantConfig("nf4", double_quant, "bfloat16")


def test_presets():
    assert quantize.quantization_config("bf16") is None
    q = quantize.quantization_config("nf4", double_quant=True)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantize.quantization_config("fp4", double_quant=False).bnb_4bit_quant_type == "fp4"
    assert quantize.quantization_config("int8").load_in_8bit
    with pytest.raises(ValueError, match="precision"):
        quantize.quantization_config("int4")


def test_load_quantized_disables_cpu_repack():
    model = quantize.load_quantized(TINY, nf4(), device="cpu", dtype=torch.float32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert quantize.disable_cpu_repack(model) == 14


def _lora_grads(evaluate_first: bool) -> dict[str, torch.Tensor]:
    model = quantize.load_quantized(TINY, nf4(), device="cpu", dtype=torch.float32)
    torch.manual_seed(0)
    model = attach_adapter(model, LoraConfig(r=4, alpha=8, dropout=0.0), quantized=True)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter (and the gradient of A) non-trivial
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.arange(24).reshape(2, 12) + 10
    if evaluate_first:  # an evaluation pass: eval mode, no gradients (what Trainer.evaluate does)
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradients_after_evaluation_equal_fresh_model():
    """Fails without disable_cpu_repack on an AVX512-BF16 CPU (verified by hand: max |diff| ~0.09)."""
    fresh, after_eval = _lora_grads(False), _lora_grads(True)
    assert fresh.keys() == after_eval.keys()
    for name in fresh:
        torch.testing.assert_close(after_eval[name], fresh[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A tiny Gemma with wider layers (256 x 512): big enough for double quantization to save bytes."""
    cfg = GemmaConfig(vocab_size=264, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, pad_token_id=0, eos_token_id=1,
                      bos_token_id=2, hidden_activation="gelu_pytorch_tanh")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide")
    GemmaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    return f"local:{path}"


def test_footprint_nf4_below_bf16_and_dq_constants_below_plain(wide_model_dir):
    bf16 = quantize.footprint(quantize.load_quantized(wide_model_dir, QuantConfig("bf16"), device="cpu"))
    q = quantize.footprint(quantize.load_quantized(wide_model_dir, nf4(False), device="cpu"))
    dq = quantize.footprint(quantize.load_quantized(wide_model_dir, nf4(True), device="cpu"))
    assert bf16["quant_constant_bytes"] == 0 and bf16["by_dtype"] == {"bfloat16": bf16["weight_bytes"]}
    for r in (q, dq):
        assert r["total_bytes"] < bf16["total_bytes"] and r["disk_bytes"] < bf16["disk_bytes"]
        # the embedding and norms stay bf16: same bytes as in the bf16 model
        assert r["by_kind"]["embedding"] == bf16["by_kind"]["embedding"]
        assert r["by_kind"]["norm"] == bf16["by_kind"]["norm"]
        # 4 bits per linear weight: a quarter of the bf16 bytes
        assert r["by_kind"]["mlp"] * 4 == bf16["by_kind"]["mlp"]
    assert dq["quant_constant_bytes"] < q["quant_constant_bytes"]
    assert "nested_absmax" in dq["quant_constants"] and "nested_absmax" not in q["quant_constants"]
    # without DQ: one fp32 absmax per 64 weights
    linear = sum(m.in_features * m.out_features for n, m in
                 GemmaForCausalLM(models.model_config(wide_model_dir)).named_modules() if n.endswith("_proj"))
    assert q["quant_constants"]["absmax"] == linear // 64 * 4
    table = quantize.footprint_table({"bf16": bf16, "nf4": q, "nf4+dq": dq})
    assert list(table.precision) == ["bf16", "nf4", "nf4+dq"] and table.total_bytes.is_monotonic_decreasing


def test_quantization_error_in_sane_range():
    fp = models.load_model(TINY, dtype=torch.float32)
    errors = {p: quantize.quantization_error(fp, quantize.load_quantized(TINY, QuantConfig(p, False), device="cpu",
                                                                         dtype=torch.float32))
              for p in ("nf4", "fp4")}
    assert len(errors["nf4"]) == 14 and set(errors["nf4"].kind) == {"attention", "mlp"}
    assert errors["nf4"].rel_error.between(0.07, 0.12).all()  # NF4 on Gaussian weights: about 0.09
    assert errors["fp4"].rel_error.mean() > errors["nf4"].rel_error.mean()  # NF4 is the better 4-bit code
