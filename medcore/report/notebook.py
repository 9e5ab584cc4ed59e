"""What the numbered notebooks (01..05) share, so each one's setup is two lines:

    from medcore.report import notebook as nb
    cfg, run_dir = nb.setup(profile, overrides, run_dir)

:func:`setup` loads and validates the config (``medcore.flows.pipeline.setup_notebook``), turns progress bars off before
the libraries that draw them load, draws figures at the book column's width, and shows what the model's weights
are. :func:`logged` sends a step's console output (the Trainer's log lines, warnings) to a log file instead of the
notebook; :func:`where` names a file relative to the project, so no page shows a path of the machine that ran it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from medcore.flows import pipeline as mp
from medcore.report import book as rp
from medcore.records import portable_paths


def setup(profile: str | Path = "demo", overrides: Iterable[str] | None = None, run_dir: str | Path | None = None):
    """``(cfg, run_dir)`` for a notebook, after quieting the libraries; displays the weights note."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when a bar is made: no progress bars in cell output
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    cfg, run_dir = mp.setup_notebook(profile, overrides, run_dir)
    _figures()
    sets = "".join(f" `--set {o}`" for o in overrides or [])
    _display(rp.Markdown(f"{mp.weights_note(cfg)} Profile `{Path(str(profile)).stem}`{sets}, run folder `{where(run_dir)}`."))
    return cfg, run_dir


def _figures() -> None:
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100})
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # outside a kernel
        pass


def _display(obj) -> None:
    try:
        from IPython.display import display

        display(obj)
    except ImportError:
        print(repr(obj))


def where(path: str | Path) -> str:
    """``path`` (or a text naming paths) relative to the project, ``../`` for the folder beside it (``../shared``),
    ``~`` for the home folder: never this machine's absolute path."""
    root = mp.project_root()
    text = str(Path(path).resolve()) if isinstance(path, Path) or Path(str(path)).exists() else str(path)
    # the project and the folder beside it first: either may itself lie under the home or temporary folder
    text = text.replace(str(root) + "/", "").replace(str(root), ".").replace(str(root.parent) + "/", "../")
    return portable_paths(text, root)


@contextlib.contextmanager
def logged(log_file: str | Path) -> Iterator[Path]:
    """Everything a step prints (stdout and stderr: the Trainer's log lines, warnings) goes to ``log_file``,
    appended, instead of the notebook's output; training's TensorBoard events are written as before."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            yield log_file
        finally:
            sys.stdout.flush()


def record_note(*records: str | Path) -> rp.Markdown:
    """The run records a notebook wrote, named relative to the project."""
    names = ", ".join(f"`{where(r)}`" for r in records)
    return rp.Markdown(f"Run record{'s' if len(records) > 1 else ''}: {names}.")


def real_weights(cfg) -> bool:
    from medcore.models import parse_model_source

    return parse_model_source(cfg.model.source).real_weights


def sources_note(split) -> rp.Markdown:
    """Where a run's questions came from (``workflows.StudyData.sources``), file paths relative to the project."""
    return rp.Markdown("Sources: " + "; ".join(f"{name} `{where(str(s))}`" for name, s in split.sources.items()) + ".")
