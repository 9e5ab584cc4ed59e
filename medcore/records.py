"""Run records: one folder per run, written atomically, and loading all runs into one DataFrame.

``results/<run_id>/`` holds

* ``config.json`` - the RunConfig the run used (``RunConfig.to_dict()``; a command's own options, such as the
  benchmark's steps, go to environment.json's ``options``);
* ``environment.json`` - :func:`environment_info` plus ``real_weights`` (False for random-weight models) and
  ``schema_version`` (:data:`SCHEMA_VERSION`; records without one are older);
* ``metrics.json`` - whatever the run measured (DataFrames inside become lists of records); ``"headline": true``
  marks the record a folder's readers show first (:func:`headline`);
* ``loss_history.json`` - the Trainer's log history (a list of dicts; ``[]`` when nothing was trained);
* ``predictions.parquet`` - one row per scored question, when given.

Everything is written into a hidden temporary sibling folder, flushed to disk, and renamed into place in one
step, so a crash or kill leaves either the whole previous state or the whole new record, never half of one.
Leftover ``.tmp-*`` folders from killed writes are ignored by the loaders.

Secrets are never recorded: string values that look like a Hugging Face token (``hf_...``) or equal the value
of an environment variable whose name contains ``TOKEN`` are replaced by ``"<redacted>"``, and keys named like
such a variable (``HF_TOKEN``, ``token``, ``use_auth_token``...) are dropped.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medcore.config import NAME_PATTERN

SCHEMA_VERSION = 2  # 2: config.json is always a RunConfig; 1 (no schema_version): some held a command's flags
FILES = ("config.json", "environment.json", "metrics.json", "loss_history.json")
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "numpy", "pandas",
            "scipy", "statsmodels", "scikit-learn", "medcore")
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{16,}")
_SECRET_KEYS = re.compile(r"(^|_)TOKEN($|_)|^(token|hf_token|use_auth_token|api_key|password|secret)$")
REDACTED = "<redacted>"


# ---- secrets and JSON ------------------------------------------------------------------------------------

def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if "TOKEN" in k.upper() and len(v) >= 8]


def scrub(value: Any, _secrets: list[str] | None = None) -> Any:
    """A JSON-ready copy of ``value`` with secrets removed (see the module docstring)."""
    secrets = _secret_values() if _secrets is None else _secrets
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, pd.DataFrame):
        value = value.to_dict(orient="records")
    elif isinstance(value, pd.Series):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): scrub(v, secrets) for k, v in value.items() if not _SECRET_KEYS.search(str(k))}
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [scrub(v, secrets) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        if _HF_TOKEN.search(value) or any(s in value for s in secrets):
            return REDACTED
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    return scrub(str(value), secrets)


def _scrub_frame(df: pd.DataFrame) -> pd.DataFrame:
    secrets = _secret_values()
    df = df.drop(columns=[c for c in df.columns if _SECRET_KEYS.search(str(c))])
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(lambda v: scrub(v, secrets) if isinstance(v, str) else v)
    return df


def _write_json(path: Path, value: Any) -> None:
    # records name files relative to the checkout (or ~), never as paths of the machine that wrote them; scratch
    # folders under the temporary folder stay as they are unless a caller maps them (portable_paths(tmp=True))
    text = json.dumps(portable_paths(scrub(value), tmp=False), indent=2, allow_nan=False)
    _write_bytes(path, text.encode("utf-8") + b"\n")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- environment -------------------------------------------------------------------------------------------

def _git_commit() -> dict[str, Any]:
    """The checkout's commit. ``MEDCORE_GIT_COMMIT``, when set, wins: a copy of the working tree (on another
    machine) may carry no ``.git``, or a stale one whose HEAD is not the code that runs."""
    if os.environ.get("MEDCORE_GIT_COMMIT"):
        return {"git_commit": os.environ["MEDCORE_GIT_COMMIT"], "git_dirty": None, "git_commit_source": "MEDCORE_GIT_COMMIT"}
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if head.returncode:  # not a git checkout
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """The installed version of each named distribution (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info() -> dict[str, Any]:
    """Python, platform, package versions, CPU/GPU, and the git commit of the medcore checkout (if any)."""
    versions = package_versions()
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(), "packages": versions}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        info["cuda_available"] = False
    info["device"] = info.get("gpu") or f"cpu ({platform.processor() or platform.machine()})"
    if os.environ.get("MEDCORE_RUN_NOTE"):  # how the run shared its machine, say; shown beside its figures
        info["run_note"] = os.environ["MEDCORE_RUN_NOTE"]
    info.update(_git_commit())
    return info


def portable_paths(value: Any, root: str | Path | None = None, tmp: bool = True) -> Any:
    """``value`` (JSON-like) with machine paths in its strings made portable: the repository `root` (default: this
    checkout) relative to it, the home folder as ``~``, the temporary folder as ``<tmp>``. For records whose
    commands and sources name files on the machine that ran them."""
    import tempfile

    root = str(Path(root) if root else Path(__file__).resolve().parent.parent)
    pairs = [(root + "/", ""), (root, "."), (str(Path.home()) + "/", "~/")]
    pairs += [(tempfile.gettempdir() + "/", "<tmp>/")] if tmp else []
    if isinstance(value, dict):
        return {k: portable_paths(v, root, tmp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(v, root, tmp) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        for old, new in pairs:
            value = value.replace(old, new)
    return value


# ---- writing -------------------------------------------------------------------------------------------------

def write_run_record(results_dir: str | Path, run_id: str, config: Any, metrics: dict, loss_history=None,
                     predictions: pd.DataFrame | None = None, extra: dict | None = None,
                     overwrite: bool = False, headline: bool = False) -> Path:
    """Write ``results_dir/run_id/`` atomically and return its path.

    ``config`` is the run's RunConfig (or its ``to_dict()``). ``extra`` goes into environment.json (e.g.
    ``real_weights``, model source, notes, a command's ``options``); ``real_weights`` is taken from ``extra`` or else
    ``metrics``. ``headline`` marks the record as its folder's headline (``"headline": true`` in metrics.json). An
    existing record is an error unless ``overwrite``; then the old folder is swapped out only after the new one is
    complete on disk.
    """
    if not NAME_PATTERN.fullmatch(run_id) or run_id.startswith("."):
        raise ValueError(f"run_id {run_id!r} may hold only letters, digits, '.', '_' and '-' (it names a folder)")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    final = results_dir / run_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"run record {final} exists; pick another run_id or pass overwrite=True")
    if final.exists() and not (final / "metrics.json").is_file():  # overwrite replaces records, nothing else
        raise FileExistsError(f"{final} exists and is not a run record (no metrics.json); medcore replaces only its "
                              "own records: pick another run id or results folder")
    extra = dict(extra or {})
    env = {**environment_info(), **extra}
    env["real_weights"] = extra.get("real_weights", (metrics or {}).get("real_weights"))
    env["schema_version"] = SCHEMA_VERSION
    if headline:
        metrics = {**(metrics or {}), "headline": True}
    tmp = results_dir / f".tmp-{run_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "environment.json", env)
        _write_json(tmp / "metrics.json", metrics)
        _write_json(tmp / "loss_history.json", list(loss_history or []))
        if predictions is not None:
            path = tmp / "predictions.parquet"
            _scrub_frame(predictions.reset_index(drop=True)).to_parquet(path, index=False)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = results_dir / f".tmp-old-{run_id}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(results_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---- loading -------------------------------------------------------------------------------------------------

def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def run_dirs(results_dir: str | Path) -> list[Path]:
    """Complete run folders (those with metrics.json), sorted by name; temporary folders are skipped."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "metrics.json").is_file())


def load_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per run: ``run_id``, ``path``, flattened metrics (``a.b`` names), ``config.*`` and ``env.*``.

    Nested tables in metrics (lists of records) stay as list cells.
    """
    rows = []
    for path in run_dirs(results_dir):
        row = {"run_id": path.name, "path": str(path)}
        row.update(_read_json(path / "metrics.json", {}))
        row["config"] = _read_json(path / "config.json", {})
        row["env"] = _read_json(path / "environment.json", {})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["run_id", "path"])
    return pd.json_normalize(rows, sep=".")


def load_predictions(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "predictions.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no predictions.parquet (the run was recorded without predictions)")
    return pd.read_parquet(path)


def load_loss_history(run_dir: str | Path) -> pd.DataFrame:
    """The Trainer log history as a DataFrame (one row per logged step; empty if nothing was trained)."""
    return pd.DataFrame(_read_json(Path(run_dir) / "loss_history.json", []))


def headline(records: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """The record marked ``"headline": true`` in its metrics (the last so marked by name), else the last by name;
    `records` are ``(path, load_run(path))`` pairs. None for no records."""
    marked = [r for r in records if (r[1].get("metrics") or {}).get("headline")]
    found = sorted(marked or records, key=lambda r: Path(r[0]).name)
    return found[-1] if found else None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """config, environment, metrics of one run as dicts."""
    run_dir = Path(run_dir)
    return {name.removesuffix(".json"): _read_json(run_dir / name) for name in FILES[:3]}
