"""Run the numbered notebooks with papermill for a profile, and build the book.

* :func:`run_pipeline` validates the profile and overrides before anything heavy, then executes
  ``notebooks/01..05`` in order into a run folder (``runs/<profile>/`` by default) with the papermill
  parameters ``profile``, ``overrides``, ``run_dir`` and ``resume``. The run folder holds the executed notebooks,
  ``pipeline.json`` (the validated config, the notebooks finished so far, rewritten atomically after each, and the
  failure if any) and the run records under ``results/``. The first failing notebook stops the pipeline with a
  :class:`NotebookError` naming the notebook, the cell's source and the error; ``resume=True`` skips the notebooks
  that finished before (same config only).
* :func:`build_book` copies a run's executed notebooks into ``book/notebooks/``, executes the report notebooks
  (``notebooks/00_intro``, ``06_study``, ``07_performance``, ``08_performance_notes``: they read the committed
  records through ``medcore.report_*`` and glue their numbers into the prose) into ``book/<page>.ipynb``, and runs
  ``jupyter-book build`` with execution off: the book never re-executes the pipeline's notebooks.

The steps themselves live in ``medcore.flows.workflows``, the tables in ``medcore.report.records``, the figures in
``medcore.report.plots``; notebooks call :func:`setup_notebook` first, so they behave the same under papermill and in
JupyterLab.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

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
            _say(progress, f"[{i}/{len(paths)}] {path.name}: finished earlier, skipped (resume)")
            continue
        _say(progress, f"[{i}/{len(paths)}] {path.name} -> {output}")
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(output), parameters=params, kernel_name=kernel_name,
                                progress_bar=progress, cwd=str(root), log_output=False,
                                config=Config(KERNEL_MANAGER_CONFIG))
        except KeyboardInterrupt:
            _interrupted(run_dir, status, path.name, output, None)
        except Exception as err:  # a failing cell, or a dead kernel: either way name the notebook
            cell = err.cell_index if isinstance(err, PapermillExecutionError) else None
            source = err.source if isinstance(err, PapermillExecutionError) else ""
            ename = err.ename if isinstance(err, PapermillExecutionError) else type(err).__name__
            evalue = err.evalue if isinstance(err, PapermillExecutionError) else str(err)
            if ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
                _interrupted(run_dir, status, path.name, output, cell)
            status["failed"] = {"notebook": path.name, "cell_index": cell, "ename": ename, "evalue": evalue}
            _write_status(run_dir, status)
            raise NotebookError(path.name, output, cell, source, ename, evalue) from None
        status["finished"] = [n for n in status["finished"] if n != path.name] + [path.name]
        status["seconds"][path.name] = round(time.perf_counter() - start, 2)
        _write_status(run_dir, status)
    _say(progress, f"pipeline finished: {run_dir}")
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


def _say(enabled: bool, text: str) -> None:
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
    import logging
    import warnings

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


# ---- the book -------------------------------------------------------------------------------------------------

def last_run_dir(root: Path | None = None) -> Path:
    """The run folder under ``<root>/runs/`` whose ``pipeline.json`` was updated last."""
    root = root or project_root()
    found = sorted((read_status(p.parent).get("updated", ""), p.stat().st_mtime, p.parent)
                   for p in (root / "runs").glob(f"*/{STATUS_FILE}"))
    if not found:
        raise PipelineError(f"no pipeline run under {root / 'runs'}; run one first (`python -m medcore run "
                            "--profile ci`) or pass run_dir")
    return found[-1][2]


def copy_executed_notebooks(run_dir: Path, book_dir: Path) -> list[str]:
    """Copy a run's executed notebooks into ``book_dir/notebooks`` (each replacing its earlier copy; other files
    there are left alone, and only the pages in ``_toc.yml`` are built); a notebook the run lacks becomes a one-cell
    page saying why. In the copies, the parameter cells (which name this machine's run folder) are tagged
    ``remove-cell`` and papermill's paths dropped; every other cell and output is the run's. Returns the names of
    the finished notebooks copied."""
    target = book_dir / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    status = read_status(run_dir)
    failed = status.get("failed") or {}
    why = (f"The pipeline stopped at `{failed.get('notebook')}` ({failed.get('ename')}: {failed.get('evalue')})."
           if failed else "This notebook was not part of the pipeline run this book was built from.")
    copied = []
    for name in NOTEBOOKS:
        if (run_dir / name).is_file():  # a failed notebook is shown too, error included
            shutil.copy2(run_dir / name, target / name)
            hide_parameter_cells(target / name)
            copied += [name] if name in status.get("finished", [name]) else []
            continue
        title = name.removesuffix(".ipynb").replace("_", " ")
        nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": f"# {title}\n\nNot executed. {why}\n"}],
              "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}},
              "nbformat": 4, "nbformat_minor": 5}
        (target / name).write_text(json.dumps(nb, indent=1))
    return copied


BOOK_MARKER = ".medcore-book.json"  # in a build folder: the entries medcore's builds wrote there


def _owned_build_entries(out: Path, root: Path) -> set[str]:
    """The entries of `out` an earlier build wrote (a later build may replace them); refuses a non-empty folder
    that no build of medcore wrote. The project's own ``_build`` (git-ignored) counts as the book's."""
    marker = out / BOOK_MARKER
    if marker.is_file():
        return set(json.loads(marker.read_text()).get("entries", []))
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.resolve() == (root / "_build").resolve():
        return {"html", "jupyter_execute", ".doctrees"} & set(entries)
    if entries:
        raise PipelineError(f"build folder {out} is not empty ({', '.join(entries[:5])}) and no book build of "
                            f"medcore wrote it (no {BOOK_MARKER}); medcore deletes only what it wrote: pick a new or "
                            "empty folder")
    return set()


def _replace_build(built: Path, out: Path, owned: set[str]) -> None:
    """Move a fresh build's entries into `out`, replacing only `owned` ones; the marker lists what is medcore's."""
    new = sorted(p.name for p in built.iterdir())
    clash = [n for n in new if (out / n).exists() and n not in owned]
    if clash:
        raise PipelineError(f"build folder {out} holds {', '.join(clash)}, which no book build of medcore wrote; "
                            "pick a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in new:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        elif (out / name).exists():
            (out / name).unlink()
        shutil.move(str(built / name), str(out / name))
    kept = {n for n in owned if (out / n).exists()}
    (out / BOOK_MARKER).write_text(json.dumps({"written_by": "medcore", "entries": sorted(kept | set(new))}))


REPORTS = (  # report notebook -> the book page its executed copy becomes (book/<page>.ipynb)
    ("00_intro.ipynb", "intro"), ("06_study.ipynb", "results"), ("07_performance.ipynb", "performance"),
    ("08_performance_notes.ipynb", "performance_notes"))
HIDDEN_TAGS = ("parameters", "injected-parameters")  # cells the book leaves out: papermill's, not the reader's


def hide_parameter_cells(path: Path) -> None:
    """Tag a notebook's parameter cells (its own and papermill's injected one) ``remove-cell`` and drop papermill's
    input and output paths from its metadata: the book shows no machine paths."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if any(t in tags for t in HIDDEN_TAGS) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, path)


def execute_reports(root: Path, run_dir: Path, book_dir: Path, *, kernel_name: str = KERNEL_NAME,
                    reports: Sequence[tuple[str, str]] = REPORTS) -> list[Path]:
    """Execute the report notebooks with papermill into ``book_dir/<page>.ipynb``: they only read the committed
    records under ``results/`` and the run's records, so this takes seconds. Their parameter cells are tagged
    ``remove-cell`` (the book shows no machine paths). Raises :class:`NotebookError` naming a failing one."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    try:
        run = str(run_dir.relative_to(root))
    except ValueError:
        run = str(run_dir)
    written = []
    for source, page in reports:
        output = book_dir / f"{page}.ipynb"
        try:
            pm.execute_notebook(str(root / "notebooks" / source), str(output), parameters={"run_dir": run},
                                kernel_name=kernel_name, progress_bar=False, cwd=str(root), log_output=False,
                                config=Config(KERNEL_MANAGER_CONFIG))
        except PapermillExecutionError as err:
            raise NotebookError(source, output, err.cell_index, err.source, err.ename, err.evalue) from None
        hide_parameter_cells(output)
        written.append(output)
    return written


def write_run_summary(run_dir: Path, book_dir: Path) -> Path:
    """``book/_generated/run.md``: the command that reproduces the run, its notebooks' state and time, and the
    machine, for the Reproducibility page's include (the one page part still written as markdown)."""
    import pandas as pd

    from medcore.report.records import markdown_table
    from medcore.results import load_run, run_dirs

    status = read_status(run_dir)
    lines = []
    if status:
        sets = " ".join(f"--set {o}" for o in status.get("overrides", []))
        lines += ["```bash", f"python -m medcore run --profile {status.get('profile')} {sets}".rstrip(), "```", ""]
        seconds, nbs = status.get("seconds", {}), status.get("notebooks", [])
        lines.append(markdown_table(pd.DataFrame({
            "notebook": nbs, "finished": ["yes" if n in status.get("finished", []) else "no" for n in nbs],
            "seconds": [f"{seconds[n]:.0f}" if n in seconds else "" for n in nbs]})))
        if status.get("failed"):
            f = status["failed"]
            lines.append(f"\nThe run stopped at `{f.get('notebook')}`: `{f.get('ename')}: {f.get('evalue')}`.\n")
        records = run_dirs(run_dir / "results")
        if records:
            env = load_run(records[-1]).get("environment") or {}
            facts = {"device": env.get("device"), "platform": env.get("platform"), "python": env.get("python"),
                     "CPU cores": env.get("cpu_count"), "git commit": env.get("git_commit"), **(env.get("packages") or {})}
            lines += [f"\nEnvironment (from the record `{records[-1].name}`):\n",
                      markdown_table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}))]
    else:
        lines.append(f"*`{run_dir.name}` has no pipeline status file.*\n")
    out = book_dir / "_generated"
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.md").write_text("\n".join(lines))
    return out / "run.md"


def build_book(run_dir: str | Path | None = None, out: str | Path = "_build", *, root: str | Path | None = None,
               quiet: bool = True, progress: bool = True) -> Path:
    """Build the Jupyter Book from a pipeline run (default :func:`last_run_dir`); return the HTML folder.

    ``out`` is the build folder (relative to the project root); the start page is ``<out>/html/index.html``. A
    rebuild replaces only what an earlier build wrote there; a non-empty folder of something else is refused.
    The run's executed notebooks are copied into ``book/notebooks/``, the report notebooks (:data:`REPORTS`) are
    executed from the committed records (:func:`execute_reports`), then ``jupyter-book build`` renders everything
    with execution off. Raises :class:`PipelineError` with the log's tail if the build fails.
    """
    root = Path(root).resolve() if root else project_root()
    run_dir = Path(run_dir).resolve() if run_dir else last_run_dir(root)
    if not run_dir.is_dir():
        raise PipelineError(f"run folder {run_dir} does not exist")
    out = Path(out) if Path(out).is_absolute() else root / out
    owned = _owned_build_entries(out, root)  # before the build: a folder that is not a book build is refused
    book_dir = root / "book"
    copy_executed_notebooks(run_dir, book_dir)
    write_run_summary(run_dir, book_dir)
    _say(progress, "executing the report notebooks (they read the committed records)")
    execute_reports(root, run_dir, book_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".medcore-book-", dir=out.parent))  # jupyter-book writes <it>/_build
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
           "--path-output", str(scratch), "--all", *(["-q"] if quiet else [])]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode or not (scratch / "_build" / "html" / "index.html").is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        raise PipelineError(f"jupyter-book build failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    try:
        _replace_build(scratch / "_build", out, owned)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _say(not quiet, proc.stdout + proc.stderr)
    _say(progress, f"book of {run_dir} built: {out / 'html' / 'index.html'}")
    return out / "html"
