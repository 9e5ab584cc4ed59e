"""Build the Jupyter Book from a pipeline run: ``python -m medcore book``.

:func:`build_book` copies a run's executed notebooks into ``book/notebooks/``, executes the report notebooks
(``notebooks/00_intro``, ``06_study``, ``07_performance``, ``08_performance_notes``: they read the committed records
through ``medcore.report`` and glue their numbers into the prose) into ``book/<page>.ipynb``, writes the run's
summary for the Reproducibility page, and runs ``jupyter-book build`` with execution off: the book never
re-executes the pipeline's notebooks. A rebuild replaces only what an earlier build wrote in its build folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import nbformat
import pandas as pd

from medcore.flows.pipeline import (KERNEL_NAME, NOTEBOOKS, STATUS_FILE, PipelineError, execute_notebook,
                                    print_progress, project_root, read_status)
from medcore.report.tables import markdown_table
from medcore.records import load_run, run_dirs

BOOK_MARKER = ".medcore-book.json"  # in a build folder: the entries medcore's builds wrote there
REPORTS = (  # report notebook -> the book page its executed copy becomes (book/<page>.ipynb)
    ("00_intro.ipynb", "intro"), ("06_study.ipynb", "results"), ("07_performance.ipynb", "performance"),
    ("08_performance_notes.ipynb", "performance_notes"))
HIDDEN_TAGS = ("parameters", "injected-parameters")  # cells the book leaves out: papermill's, not the reader's


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


def hide_parameter_cells(path: Path) -> None:
    """Tag a notebook's parameter cells (its own and papermill's injected one) ``remove-cell`` and drop papermill's
    input and output paths from its metadata: the book shows no machine paths."""
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
    ``remove-cell`` (the book shows no machine paths). Raises :class:`~medcore.flows.pipeline.NotebookError`
    naming a failing one."""
    try:
        run = str(run_dir.relative_to(root))
    except ValueError:
        run = str(run_dir)
    written = []
    for source, page in reports:
        output = book_dir / f"{page}.ipynb"
        execute_notebook(root / "notebooks" / source, output, {"run_dir": run}, kernel_name=kernel_name,
                         progress=False, cwd=root)
        hide_parameter_cells(output)
        written.append(output)
    return written


def write_run_summary(run_dir: Path, book_dir: Path) -> Path:
    """``book/_generated/run.md``: the command that reproduces the run, its notebooks' state and time, and the
    machine, for the Reproducibility page's include (the one page part still written as markdown)."""
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
    with execution off. Raises :class:`~medcore.flows.pipeline.PipelineError` with the log's tail if the build fails.
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
    print_progress(progress, "executing the report notebooks (they read the committed records)")
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
    print_progress(not quiet, proc.stdout + proc.stderr)
    print_progress(progress, f"book of {run_dir} built: {out / 'html' / 'index.html'}")
    return out / "html"
