"""Where medcore keeps what it downloads, converts or initialises: the embedded model's converted folder, saved
random checkpoints and the MedMCQA mirror, all under one folder."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MEDCORE_CACHE`` or ``~/.cache/medcore``, created if missing."""
    path = Path(os.environ.get("MEDCORE_CACHE") or Path.home() / ".cache" / "medcore").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
