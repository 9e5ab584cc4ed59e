"""Run the numbered notebooks with papermill for a profile: ``python -m medcore run``.

:func:`run_pipeline` validates the profile and overrides before anything heavy, then executes ``notebooks/01..05``
in order into a run folder (``runs/<profile>/`` by default) with the papermill parameters ``profile``,
``overrides``, ``run_dir`` and ``resume``. The run folder holds the executed notebooks, ``pipeline.json`` (the
validated config, the notebooks finished so far, rewritten atomically after each, and the failure if any) and the
run records under ``results/``. The first failing notebook stops the pipeline with a :class:`NotebookError` naming
the notebook, the cell's source and the error; ``resume=True`` skips the notebooks that finished before (same
config only).

The steps themselves live in ``medcore.flows.workflows``, the tables in ``medcore.report.tables``, the figures in
``medcore.report.plots``, the book built from a run in ``medcore.flows.book``; notebooks call
:func:`setup_notebook` first, so they behave the same under papermill and in JupyterLab.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from medcore.config import ConfigError, RunConfig, load_profile

NOTEBOOKS = ("01_data_exploration.ipynb", "02_quantize.ipynb", "03_finetune.ipynb", "04_evaluate.ipynb",
             "05_analysis.ipynb")
STATUS_FILE = "pipeline.json"
KERNEL_NAME = "python3"
# CurveZMQ between papermill and the kernel where its kernelspec declares support (ipykernel >= 7 does): the kernel
# then has no "running over TCP without encryption" warning to print, and its localhost traffic is encrypted
KERNEL_MANAGER_CONFIG = {"KernelManager": {"transport_encryption": "auto"}}


class PipelineError(RuntimeError):
    """The pipeline or the book could not run; the message says why and what to do."""


class NotebookError(PipelineError):
    """A notebook failed; ``notebook``, ``output`` (its executed copy), ``cell_index``, ``source``, ``ename`` and
    ``evalue`` say where and how."""

    def __init__(self, notebook: str, output: Path, cell_index: int | None, source: str, ename: str, evalue: str):
        self.notebook, self.output, self.cell_index = notebook, output, cell_index
        self.source, self.ename, self.evalue = source, ename, evalue
        cell = f"cell {cell_index}" if cell_index is not None else "a cell"
        super().__init__(f"notebook {notebook} failed in {cell} (executed copy: {output})\n"
                         f"--- cell source ---\n{source.rstrip()}\n--- error ---\n{ename}: {evalue}")


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``notebooks/`` and ``_toc.yml`` (``start`` or a parent), else the one above medcore."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def default_run_dir(profile: str | Path, root: Path | None = None) -> Path:
    return (root or project_root()) / "runs" / Path(str(profile)).stem


def notebook_paths(notebooks: str | Path | Sequence[str | Path] | None = None, root: Path | None = None) -> list[Path]:
    """The notebooks to run, in order: ``None`` the shipped ones; a folder its ``NN_*.ipynb``; or a list."""
    folder = (root or project_root()) / "notebooks"
    if notebooks is None:
        paths = [folder / name for name in NOTEBOOKS]
    elif isinstance(notebooks, (str, Path)) and Path(notebooks).is_dir():
        paths = sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
    else:
        items = [notebooks] if isinstance(notebooks, (str, Path)) else list(notebooks)
        paths = [Path(p) if Path(p).is_absolute() or Path(p).exists() else folder / Path(p).name for p in items]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise PipelineError(f"notebook(s) not found: {', '.join(missing) or notebooks}")
    return paths


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """``pipeline.json`` of a run folder, or ``{}``."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, fsynced, renamed over the old one."""
    status = {**status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    fd, tmp = tempfile.mkstemp(prefix=".pipeline-", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _config_json(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


RUN_PARAMETERS = ("profile", "overrides", "run_dir", "resume")  # every notebook's; run_pipeline passes them itself


def notebook_parameters(paths: Iterable[str | Path]) -> dict[str, list[str]]:
    """Each name a notebook's parameters cell sets -> the notebooks that set it (the run's own four left out)."""
    import papermill as pm

    out: dict[str, list[str]] = {}
    for path in paths:
        for name in pm.inspect_notebook(str(path)):
            if name not in RUN_PARAMETERS:
                out.setdefault(name, []).append(Path(path).name)
    return out


def parse_parameters(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """``[(name, value), ...]`` from ``medcore run -p NAME VALUE`` with each value read as YAML (``8``, ``true``,
    ``[bf16, nf4]``, ``null``; anything else stays a string)."""
    out = {}
    for name, text in pairs:
        try:
            out[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[name] = text
    return out


def check_parameters(parameters: dict[str, Any], paths: Sequence[Path]) -> None:
    """Refuse a parameter no notebook of the run takes, or one of the run's own, naming what is allowed."""
    known = notebook_parameters(paths)
    for name in parameters:
        if name in RUN_PARAMETERS:
            flag = {"overrides": "--set"}.get(name, "--" + name.replace("_", "-"))
            raise ConfigError(f"parameter {name!r} is the run's own: give it as {flag}")
        if name not in known:
            allowed = ", ".join(f"{k} ({', '.join(v)})" for k, v in known.items()) or "none"
            raise ConfigError(f"parameter {name!r}: no notebook of this run takes it; parameters: {allowed}")


def execute_notebook(source: Path, output: Path, parameters: dict[str, Any], *, kernel_name: str = KERNEL_NAME,
                     progress: bool = False, cwd: Path) -> None:
    """papermill on one notebook with medcore's kernel settings, in ``cwd``; a failing cell raises
    :class:`NotebookError` naming the notebook."""
    # the notebook machinery loads only here: train, evaluate and bench run where it is not installed
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                            progress_bar=progress, cwd=str(cwd), log_output=False,
                            config=Config(KERNEL_MANAGER_CONFIG))
    except PapermillExecutionError as err:
        raise NotebookError(Path(source).name, output, err.cell_index, err.source, err.ename, err.evalue) from None


def run_pipeline(profile: str | Path = "demo", overrides: Iterable[str] | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, notebooks: str | Path | Sequence[str | Path] | None = None, *,
                 parameters: dict[str, Any] | None = None, kernel_name: str = KERNEL_NAME, progress: bool = True,
                 root: str | Path | None = None) -> Path:
    """Execute the notebooks for ``profile`` + ``overrides`` into ``run_dir`` (default ``runs/<profile>``).

    A bad override raises ``ConfigError`` before any kernel starts. ``resume`` skips the notebooks that
    ``pipeline.json`` lists as finished, if its config is this one (otherwise :class:`PipelineError`); notebook 03
    then continues training from its last checkpoint. ``parameters`` are extra papermill parameters, each one that some
    notebook's parameters cell sets (checked before any kernel starts; ``medcore run -p NAME VALUE``); notebooks run
    with the project ``root`` as working directory. Raises :class:`NotebookError` at the first failing notebook.
    """
    overrides = [str(o) for o in (overrides or [])]
    cfg = load_profile(profile, overrides)
    root = Path(root).resolve() if root else project_root()
    paths = notebook_paths(notebooks, root)
    check_parameters(dict(parameters or {}), paths)
    run_dir = Path(run_dir).resolve() if run_dir else default_run_dir(profile, root)
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    old = read_status(run_dir)
    if resume and old and old.get("config") != _config_json(cfg):
        raise PipelineError(f"{run_dir} holds a run of another config (profile {old.get('profile')!r}, overrides "
                            f"{old.get('overrides')}); resume it with those settings, or pick another run_dir")
    keep = resume and bool(old)
    status = {"profile": str(profile), "overrides": overrides, "parameters": dict(parameters or {}),
              "config": _config_json(cfg), "run_dir": str(run_dir),
              "notebooks": [p.name for p in paths], "finished": list(old.get("finished", [])) if keep else [],
              "seconds": dict(old.get("seconds", {})) if keep else {}, "failed": None,
              "started": old.get("started") if keep else datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_status(run_dir, status)
    params = {**(parameters or {}), "profile": str(profile), "overrides": overrides, "run_dir": str(run_dir),
              "resume": bool(resume)}
    for i, path in enumerate(paths, 1):
        output = run_dir / path.name
        if path.name in status["finished"] and output.is_file():
            print_progress(progress, f"[{i}/{len(paths)}] {path.name}: finished earlier, skipped (resume)")
            continue
        print_progress(progress, f"[{i}/{len(paths)}] {path.name} -> {output}")
        start = time.perf_counter()
        try:
            execute_notebook(path, output, params, kernel_name=kernel_name, progress=progress, cwd=root)
        except KeyboardInterrupt:
            _interrupted(run_dir, status, path.name, output, None)
        except Exception as err:  # a failing cell, or a dead kernel: either way name the notebook
            failed = err if isinstance(err, NotebookError) else NotebookError(path.name, output, None, "",
                                                                              type(err).__name__, str(err))
            if failed.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
                _interrupted(run_dir, status, path.name, output, failed.cell_index)
            status["failed"] = {"notebook": path.name, "cell_index": failed.cell_index, "ename": failed.ename,
                                "evalue": failed.evalue}
            _write_status(run_dir, status)
            raise failed from None
        status["finished"] = [n for n in status["finished"] if n != path.name] + [path.name]
        status["seconds"][path.name] = round(time.perf_counter() - start, 2)
        _write_status(run_dir, status)
    print_progress(progress, f"pipeline finished: {run_dir}")
    return run_dir


def _interrupted(run_dir: Path, status: dict[str, Any], notebook: str, output: Path, cell: int | None) -> None:
    """Record a Ctrl-C in ``pipeline.json`` and the cut notebook, then stop with one line."""
    status["failed"] = {"notebook": notebook, "cell_index": cell, "ename": "KeyboardInterrupt",
                        "evalue": "interrupted (Ctrl-C)", "interrupted": True}
    _write_status(run_dir, status)
    mark_interrupted(output)
    raise KeyboardInterrupt(f"{notebook} was cut (marked in {output}; recorded in {run_dir / STATUS_FILE}); the "
                            "same command with --resume runs it again and goes on") from None


def mark_interrupted(output: Path) -> None:
    """Put a first cell into a cut notebook's executed copy saying it did not finish (papermill saves the copy after
    every cell, so it holds the cells that ran)."""
    import nbformat

    if not output.is_file():
        return
    nb = nbformat.read(output, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        "**Interrupted (Ctrl-C): this notebook did not finish.** The cells below ran up to the cut; "
        "`python -m medcore run --resume` runs it again."))
    nb.metadata["medcore"] = {"interrupted": True}
    nbformat.write(nb, output)


def print_progress(enabled: bool, text: str) -> None:
    """One progress line on stderr (beside papermill's bar), if ``enabled``."""
    if enabled:
        print(text, file=sys.stderr, flush=True)


# ---- notebooks ------------------------------------------------------------------------------------------------

def setup_notebook(profile: str | Path = "demo", overrides: Iterable[str] | None = None,
                   run_dir: str | Path | None = None) -> tuple[RunConfig, Path]:
    """First cell of every notebook: go to the project root, quiet the libraries, load and validate the config,
    point ``cfg.results_dir`` at ``<run_dir>/results``; returns ``(cfg, run_dir)``."""
    root = project_root()
    os.chdir(root)
    quiet_libraries()
    cfg = load_profile(profile, list(overrides or []))
    run_dir = Path(run_dir).resolve() if run_dir else default_run_dir(profile, root)
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    cfg.results_dir = str(run_dir / "results")
    return cfg, run_dir


def quiet_libraries() -> None:
    """No per-batch progress bars and none of the known harmless warnings repeated per layer in executed
    notebooks; real errors and other warnings still show."""
    for message in (".*MatMul8bitLt: inputs will be cast.*", ".*IProgress not found.*",
                    ".*Could not find a config file in.*", ".*is_gradient_checkpointing.*deprecated.*"):
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def train_dir(run_dir: str | Path) -> Path:
    """Where notebook 03 trains (checkpoints, ``adapter/``) and notebook 04 finds the adapter."""
    return Path(run_dir) / "train"


def weights_note(cfg: RunConfig) -> str:
    """Markdown saying what the model's weights are; every notebook shows it under its title."""
    from medcore.models import parse_model_source

    src = parse_model_source(cfg.model.source)
    if not src.real_weights:
        return (f"**Random weights** (`{cfg.model.source}`): this run checks the pipeline. Every accuracy, loss and "
                "calibration figure below is meaningless for medicine; sizes and timings are those of the shape.")
    if src.kind == "embedded":
        return (f"Real weights: `{cfg.model.source}` (converted from a 4-bit GGUF file, so its bf16 weights are "
                "dequantized from 4 bits).")
    return f"Real weights: `{cfg.model.source}`."
