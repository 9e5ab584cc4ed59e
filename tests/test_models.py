"""models.py: spec parsing, real-architecture configs, random weights (all CPU)."""
import time

import pytest
import torch

from medcore import models as M

# MedMCQA validation question 1 (dev.json), in the lm-evaluation-harness medmcqa format
MEDMCQA_PROMPT = (
    "Question: Which of the following is not true for myelinated nerve fibers:\nChoices:\n"
    "A. Impulse through myelinated fibers is slower than non-myelinated fibers\n"
    "B. Membrane currents are generated at nodes of Ranvier\n"
    "C. Saltatory conduction of impulses is seen\n"
    "D. Local anesthesia is effective only when the nerve is not covered by myelin sheath\nAnswer:"
)
def single_token_ids(tok, texts=(" A", " B", " C", " D")):
    return [tok.encode(t, add_special_tokens=False) for t in texts]


# ---------------------------------------------------------------- specs, without loading
@pytest.mark.parametrize("spec,kind,name,real", [
    ("hub:google/gemma-2b", "hub", "google/gemma-2b", True),
    ("local:/some/folder", "local", "/some/folder", True),
    ("embedded:gemma-3-270m", "embedded", "gemma-3-270m", True),
    ("random:gemma-2b", "random", "gemma-2b", False),
    ("random:tiny-gemma3", "random", "tiny-gemma3", False),
])
def test_parse_model_source(spec, kind, name, real):
    src = M.parse_model_source(spec)
    assert (src.kind, src.name, src.real_weights, src.spec) == (kind, name, real, spec)


@pytest.mark.parametrize("spec", ["gemma-2b", "hub:", "random:gemma-7b", "embedded:llama", "s3:x", ""])
def test_bad_spec_lists_allowed_forms(spec):
    with pytest.raises(ValueError, match="allowed: hub:<repo_id>, local:<path>"):
        M.parse_model_source(spec)


def test_missing_local_path_fails_before_loading(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        M.check_model_source(f"local:{missing}")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        M.load_model(f"local:{missing}")


CLOSED_PORT = "http://127.0.0.1:9"  # refuses at once: the offline case, without the network or its timeouts


@pytest.mark.parametrize("load", [M.load_tokenizer, M.load_model, M.model_config])
def test_hub_model_without_the_hub_fails_fast_in_one_line(monkeypatch, load):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(M.HubUnavailableError) as err:
        load("hub:medcore-tests/no-such-model")
    assert time.monotonic() - start < 10  # not the libraries' ~50 s of retries
    message = str(err.value)
    assert "\n" not in message and f"{CLOSED_PORT} did not answer" in message
    assert "'medcore-tests/no-such-model' is not in the local cache" in message
    assert "local:<folder>" in message and "embedded:gemma-3-270m" in message


def test_hub_offline_flag_is_honoured_without_a_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(M, "_probe", lambda endpoint: pytest.fail("probed the Hub although HF_HUB_OFFLINE is set"))
    with pytest.raises(M.HubUnavailableError, match=r"HF_HUB_OFFLINE is set"):
        M.load_tokenizer("hub:medcore-tests/no-such-model")


# ---------------------------------------------------------------- configs of real architectures
def count_on_meta(spec):
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(M.model_config(spec), dtype=torch.bfloat16)
    model.medcore_source = M.parse_model_source(spec)
    return M.describe_model(model)


def test_random_gemma_2b_has_the_real_parameter_count():
    d = count_on_meta("random:gemma-2b")
    assert d["architecture"] == "GemmaForCausalLM" and d["real_weights"] is False
    assert d["params_total"] == 2_506_172_416  # google/gemma-2b: 2.51 B with the tied embedding
    assert d["params_embedding"] == 256_000 * 2048  # 0.524 B


def test_gemma_3_270m_config():
    d = count_on_meta("random:gemma-3-270m")
    assert d["architecture"] == "Gemma3ForCausalLM"
    assert d["params_embedding"] == 262_144 * 640 and abs(d["params_total"] - 268.1e6) < 0.5e6


# ---------------------------------------------------------------- tiny random models
def test_tiny_tokenizer_encodes_medmcqa_prompts():
    tok = M.load_tokenizer("random:tiny-gemma")
    assert len(tok) == M.TINY_VOCAB
    assert single_token_ids(tok) == [[260], [261], [262], [263]]
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    ids = tok(MEDMCQA_PROMPT + " B").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == 261 and max(ids) < M.TINY_VOCAB
    assert tok.decode(ids, skip_special_tokens=True) == MEDMCQA_PROMPT + " B"


@pytest.mark.parametrize("spec,arch", [("random:tiny-gemma", "GemmaForCausalLM"),
                                       ("random:tiny-gemma3", "Gemma3ForCausalLM")])
def test_tiny_random_models_load_marked_random_and_seeded(spec, arch):
    model, again, other = M.load_model(spec), M.load_model(spec), M.load_model(spec, seed=1)
    d = M.describe_model(model)
    assert d["source"] == spec and d["real_weights"] is False and d["architecture"] == arch
    assert d["dtype"] == "bfloat16" and d["params_total"] == d["params_embedding"] + d["params_non_embedding"]
    same = [torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())]
    assert all(same)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight)
    ids = torch.tensor([M.load_tokenizer(spec)(MEDMCQA_PROMPT).input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], M.TINY_VOCAB) and torch.isfinite(logits).all()


def test_quantized_random_models_reuse_one_saved_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig
    monkeypatch.setenv("MEDCORE_CACHE", str(tmp_path))
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    first = M.load_model("random:tiny-gemma", quantization_config=qc, seed=3)
    saved = list((tmp_path / "random").iterdir())
    assert len(saved) == 1 and not saved[0].name.startswith(".")  # no half-written folder left behind
    assert (saved[0] / "model.safetensors").is_file() and "seed3" in saved[0].name
    monkeypatch.setattr(M, "_random_model", lambda *a, **k: pytest.fail("initialised again instead of reloading"))
    again = M.load_model("random:tiny-gemma", quantization_config=qc, seed=3)
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="single device"):
        M.load_model("random:tiny-gemma", device_map="auto")


def test_tiny_random_model_quantized_nf4():
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                            bnb_4bit_compute_dtype=torch.bfloat16)
    model = M.load_model("random:tiny-gemma", quantization_config=qc)
    plain = M.describe_model(M.load_model("random:tiny-gemma"))
    d = M.describe_model(model)
    assert d["real_weights"] is False and d["quantization"] == "bitsandbytes"
    assert d["params_total"] == plain["params_total"]  # logical counts, not packed bytes
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 7
    ids = torch.tensor([M.tiny_tokenizer()(MEDMCQA_PROMPT).input_ids])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
