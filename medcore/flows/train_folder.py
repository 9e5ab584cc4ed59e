"""A training folder (``medcore train --output-dir``, notebook 03's ``<run_dir>/train``): what marks it as
medcore's, what a fresh run may delete there, and which settings a resumed run must keep.

Every training run writes :data:`RUN_MARKER` (its config) first. A fresh run then deletes only the entries medcore
and its Trainer write (:data:`OWN_ENTRIES` and ``checkpoint-N``) and refuses a non-empty folder without the marker;
a resume refuses changed settings, each one named, so a record never claims a value the run did not use.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from medcore.config import ConfigError, RunConfig
from medcore.steps import last_checkpoint

RUN_MARKER = "medcore_run.json"  # written first into every training folder: medcore's own, and its settings
# with checkpoint-N, everything medcore and its Trainer write there (runs/: the TensorBoard events)
OWN_ENTRIES = ("adapter", "runs", "train_result.json", RUN_MARKER)
RESUME_MAY_CHANGE = ("name", "results_dir", "eval.")  # where the record goes and how scoring runs: not training


def _own(entry: Path) -> bool:
    return entry.name in OWN_ENTRIES or (entry.name.startswith("checkpoint-") and entry.is_dir())


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"lora.r: 4 -> 8"`` for every setting that differs, except :data:`RESUME_MAY_CHANGE`; a setting the old
    config lacks (added to medcore since) counts as changed only if it is not at its default."""
    def flat(d, prefix=""):
        return {k: v for key, value in d.items()
                for k, v in (flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else
                             [(f"{prefix}{key}", value)])}
    old, new, default = (flat(json.loads(json.dumps(d, default=str))) for d in (old, new, RunConfig().to_dict()))
    return [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if not key.startswith(RESUME_MAY_CHANGE) and old.get(key, default.get(key)) != new.get(key)]


def prepare_output_dir(cfg: RunConfig, output_dir: str | Path, resume: bool, write: bool = True) -> Path:
    """Make `output_dir` ready to train `cfg` into, deleting only what medcore wrote there.

    A fresh run empties a folder of an earlier medcore run (one with :data:`RUN_MARKER`) of the entries medcore
    writes, and refuses a non-empty folder that is not one. ``resume`` refuses settings that differ from the run's
    (each named, old -> new; :data:`RESUME_MAY_CHANGE` excepted), so the record never claims a value the run did
    not use. Then the marker is written with this config. ``write=False`` only checks (other processes of a launch).
    """
    output_dir = Path(output_dir)
    marker = output_dir / RUN_MARKER
    entries = sorted(output_dir.iterdir()) if output_dir.is_dir() else []
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output folder {output_dir} is a file; pick a folder for --output-dir")
    if resume and marker.is_file():
        try:
            recorded = json.loads(marker.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--resume: {marker} is unreadable, so the run's settings cannot be checked; "
                              "start a new run in another --output-dir") from None
        changed = changed_settings(recorded, cfg.to_dict())
        if changed:
            raise ConfigError(f"--resume: these settings differ from the run in {output_dir}: {'; '.join(changed)}. "
                              "Resume with the run's settings, or start a new run in another --output-dir")
        return output_dir
    if entries and not marker.is_file():
        shown = ", ".join(e.name for e in entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ConfigError(f"output folder {output_dir} is not empty ({shown}) and is not a medcore run (no "
                          f"{RUN_MARKER}); medcore deletes only what it wrote: pick a new or empty --output-dir")
    if write:
        for entry in entries:
            if _own(entry):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_dir / f".{RUN_MARKER}.tmp"
        tmp.write_text(json.dumps({"written_by": "medcore", "config": cfg.to_dict()}, indent=2, default=str))
        os.replace(tmp, marker)
    return output_dir


def interrupted_training(output_dir: str | Path) -> str:
    """The one line a Ctrl-C during training ends with: the checkpoint kept and how to continue, or that none was."""
    last = last_checkpoint(output_dir)
    if last is None:
        return f"training stopped by Ctrl-C before its first checkpoint in {output_dir}; nothing to resume from"
    return (f"training stopped by Ctrl-C; the last complete checkpoint, {last}, is kept: the same command with "
            "--resume (resume=True) continues from it")
