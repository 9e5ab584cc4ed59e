"""Run the numbered notebooks with papermill for a profile, and build the book from what they produced.

Two entry points (``python -m medcore run`` / ``python -m medcore book`` call them):

* :func:`run_pipeline` validates the profile and overrides (``config.load_profile``) before anything heavy,
  then executes ``notebooks/01..05`` in order with papermill into a run folder (``runs/<profile>/`` by
  default). Every notebook gets the papermill parameters ``profile``, ``overrides`` and ``run_dir``; the
  notebooks write their run records under ``<run_dir>/results/`` and their other artefacts (the adapter,
  checkpoints) under ``<run_dir>``. The run folder holds

  - the executed notebooks (``01_data_exploration.ipynb`` ...), outputs included;
  - ``pipeline.json``: profile, overrides, the validated config, the notebooks finished so far (rewritten
    atomically after each one) and the failure, if any;
  - ``results/<run_id>/``: the run records (``medcore.results``).

  The first failing notebook stops the pipeline with a :class:`NotebookError` naming the notebook, the
  failing cell's source and the error; its partly executed copy stays in the run folder to inspect.
  ``resume=True`` skips the notebooks that ``pipeline.json`` lists as finished (for the same config).

* :func:`build_book` copies the executed notebooks of a run (the last one by default) into
  ``book/notebooks/``, writes the record-driven parts of the results, performance and reproducibility pages
  into ``book/_generated/``, and runs ``jupyter-book build`` with execution off (``_config.yml`` says
  ``execute_notebooks: "off"``): the book shows the notebooks as the pipeline executed them, it never
  re-executes them.

Notebooks call :func:`setup_notebook` in their first cell so that they behave the same whether papermill runs
them (from the project root) or a person opens them in JupyterLab (from ``notebooks/``).
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

from medcore.config import RunConfig, load_profile

NOTEBOOKS = (
    "01_data_exploration.ipynb",
    "02_quantize.ipynb",
    "03_finetune.ipynb",
    "04_evaluate.ipynb",
    "05_analysis.ipynb",
)
STATUS_FILE = "pipeline.json"
KERNEL_NAME = "python3"


class PipelineError(RuntimeError):
    """The pipeline or the book could not run; the message says why and what to do."""


class NotebookError(PipelineError):
    """A notebook failed. ``notebook``, ``output`` (its executed copy), ``cell_index``, ``source``,
    ``ename`` and ``evalue`` describe where and how; ``str()`` shows them all."""

    def __init__(self, notebook: str, output: Path, cell_index: int | None, source: str, ename: str, evalue: str):
        self.notebook, self.output, self.cell_index = notebook, output, cell_index
        self.source, self.ename, self.evalue = source, ename, evalue
        cell = f"cell {cell_index}" if cell_index is not None else "a cell"
        super().__init__(
            f"notebook {notebook} failed in {cell} (executed copy: {output})\n"
            f"--- cell source ---\n{source.rstrip()}\n--- error ---\n{ename}: {evalue}"
        )


# ---- locations ----------------------------------------------------------------------------------------------

def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``notebooks/`` and ``_toc.yml``: ``start`` (default: the working directory) or a
    parent of it, else the folder above the installed ``medcore`` package (an editable install)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def profile_name(profile: str | Path) -> str:
    """``"demo"`` for ``"demo"`` and for ``"path/to/demo.yaml"``."""
    return Path(str(profile)).stem


def default_run_dir(profile: str | Path, root: Path | None = None) -> Path:
    return (root or project_root()) / "runs" / profile_name(profile)


def notebook_paths(notebooks: str | Path | Sequence[str | Path] | None = None, root: Path | None = None) -> list[Path]:
    """The notebooks to run, in order.

    ``None``: the numbered notebooks in ``<root>/notebooks``. A folder: its ``NN_*.ipynb`` files, sorted.
    A list: those notebooks; bare names are looked up in ``<root>/notebooks``.
    """
    folder = (root or project_root()) / "notebooks"
    if notebooks is None:
        paths = [folder / name for name in NOTEBOOKS]
    elif isinstance(notebooks, (str, Path)) and Path(notebooks).is_dir():
        paths = sorted(p for p in Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
        if not paths:
            raise PipelineError(f"no numbered notebooks (NN_name.ipynb) in {notebooks}")
    else:
        items = [notebooks] if isinstance(notebooks, (str, Path)) else list(notebooks)
        paths = [Path(p) if Path(p).is_absolute() or Path(p).exists() else folder / Path(p).name for p in items]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"notebook(s) not found: {', '.join(missing)}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise PipelineError(f"two notebooks share a name: {names}")
    return paths


# ---- status file -------------------------------------------------------------------------------------------

def read_status(run_dir: str | Path) -> dict[str, Any]:
    """``pipeline.json`` of a run folder, or ``{}`` when there is none."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Write pipeline.json atomically: a temporary file in the same folder, fsynced, then renamed over it."""
    status = {**status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    fd, tmp = tempfile.mkstemp(prefix=".pipeline-", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_run(status: dict[str, Any], cfg: RunConfig) -> bool:
    return json.loads(json.dumps(cfg.to_dict(), default=str)) == status.get("config")


# ---- running -----------------------------------------------------------------------------------------------

def run_pipeline(profile: str | Path = "demo", overrides: Iterable[str] | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, notebooks: str | Path | Sequence[str | Path] | None = None, *,
                 parameters: dict[str, Any] | None = None, kernel_name: str = KERNEL_NAME,
                 progress: bool = True, root: str | Path | None = None) -> Path:
    """Execute the numbered notebooks for ``profile`` + ``overrides`` into ``run_dir``; return ``run_dir``.

    Parameters
    ----------
    profile, overrides
        As for ``medcore.config.load_profile``: a profile name or YAML path, and ``section.field=value``
        strings. They are validated here first (a :class:`~medcore.config.ConfigError` before any notebook
        starts) and passed to every notebook as papermill parameters, with ``run_dir`` and ``resume`` (notebook
        03 then continues training from its last checkpoint instead of starting over).
    run_dir
        The run folder; default ``<project>/runs/<profile name>/``. Created if needed. Executed notebooks go
        there under their own names; run records under ``<run_dir>/results/``. Records of earlier runs in the
        same folder are kept (notebook 05 tabulates every record it finds there).
    resume
        Skip the notebooks that ``pipeline.json`` lists as finished, if the recorded config is the same as
        this one (a different config is an error: use another ``run_dir``). Without ``resume`` every notebook
        runs again and the list starts empty.
    notebooks
        Which notebooks to run (see :func:`notebook_paths`); default ``notebooks/01..05``.
    parameters
        Extra papermill parameters for every notebook (the knobs in their ``parameters`` cells).
    kernel_name
        The Jupyter kernel; ``python3`` must resolve to this environment's interpreter.
    progress
        Show papermill's per-cell progress bar, and a line per notebook on stderr.
    root
        The project folder (default :func:`project_root`); notebooks run with it as working directory, so
        relative paths in profiles mean the same as on the command line.

    Raises
    ------
    NotebookError
        The first notebook that fails; the message shows the failing cell's source and error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    overrides = [str(o) for o in (overrides or [])]
    cfg = load_profile(profile, overrides)  # ConfigError here, before any kernel starts
    root = Path(root).resolve() if root else project_root()
    paths = notebook_paths(notebooks, root)
    run_dir = Path(run_dir).resolve() if run_dir else default_run_dir(profile, root)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results").mkdir(exist_ok=True)

    status = read_status(run_dir)
    if resume and status and not _same_run(status, cfg):
        raise PipelineError(
            f"{run_dir} holds a run of another config (profile {status.get('profile')!r}, overrides "
            f"{status.get('overrides')}); resume it with those settings, or pick another run_dir"
        )
    finished: list[str] = list(status.get("finished", [])) if resume else []
    seconds: dict[str, float] = dict(status.get("seconds", {})) if resume else {}
    status = {
        "profile": str(profile), "overrides": overrides, "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
        "run_dir": str(run_dir), "notebooks": [p.name for p in paths], "finished": finished, "seconds": seconds,
        "failed": None, "started": status.get("started") if resume and status else
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_status(run_dir, status)

    params = {**(parameters or {}), "profile": str(profile), "overrides": overrides, "run_dir": str(run_dir),
              "resume": bool(resume)}
    for i, path in enumerate(paths, 1):
        output = run_dir / path.name
        if path.name in finished and output.is_file():
            _say(progress, f"[{i}/{len(paths)}] {path.name}: finished earlier, skipped (resume)")
            continue
        _say(progress, f"[{i}/{len(paths)}] {path.name} -> {output}")
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(output), parameters=params, kernel_name=kernel_name,
                                progress_bar=progress, cwd=str(root), log_output=False)
        except PapermillExecutionError as err:
            status["failed"] = {"notebook": path.name, "cell_index": err.cell_index, "ename": err.ename,
                                "evalue": err.evalue}
            _write_status(run_dir, status)
            raise NotebookError(path.name, output, err.cell_index, err.source, err.ename, err.evalue) from None
        except Exception as err:  # kernel died, notebook unreadable...: still say which notebook
            status["failed"] = {"notebook": path.name, "cell_index": None, "ename": type(err).__name__,
                                "evalue": str(err)}
            _write_status(run_dir, status)
            raise NotebookError(path.name, output, None, "", type(err).__name__, str(err)) from err
        finished = [n for n in finished if n != path.name] + [path.name]
        seconds[path.name] = round(time.perf_counter() - start, 2)
        status.update(finished=finished, seconds=seconds)
        _write_status(run_dir, status)
    _say(progress, f"pipeline finished: {run_dir}")
    return run_dir


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


# ---- notebooks ------------------------------------------------------------------------------------------------

def setup_notebook(profile: str | Path = "demo", overrides: Iterable[str] | None = None,
                   run_dir: str | Path | None = None) -> tuple[RunConfig, Path]:
    """The first code cell of every notebook: ``cfg, run_dir = setup_notebook(profile, overrides, run_dir)``.

    Changes the working directory to the project root (JupyterLab starts notebooks in ``notebooks/``;
    papermill already runs them from the root), loads and validates the config, points
    ``cfg.results_dir`` at ``<run_dir>/results`` and returns ``(cfg, run_dir)``.
    """
    root = project_root()
    os.chdir(root)
    quiet_libraries()
    cfg = load_profile(profile, list(overrides or []))
    run_dir = Path(run_dir).resolve() if run_dir else default_run_dir(profile, root)
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    cfg.results_dir = str(run_dir / "results")
    return cfg, run_dir


def quiet_libraries() -> None:
    """Keep executed notebooks readable: no per-batch progress bars (datasets, transformers, the Trainer's
    notebook widget) and none of the known, harmless warnings repeated per layer or per call. Real errors
    and other warnings still show."""
    import logging
    import warnings

    for message in (".*MatMul8bitLt: inputs will be cast.*",  # once per int8 layer and call
                    ".*IProgress not found.*",  # tqdm without ipywidgets: falls back to text, fine
                    ".*Could not find a config file in.*",  # peft saving an adapter of a random model
                    ".*is_gradient_checkpointing.*deprecated.*"):
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional CPU kernel package not installed
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # also makes the Trainer default to disable_tqdm=True
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


# ---- the book -------------------------------------------------------------------------------------------------

def last_run_dir(root: Path | None = None) -> Path:
    """The run folder under ``<root>/runs/`` whose ``pipeline.json`` was updated last."""
    root = root or project_root()
    candidates = []
    for status_path in (root / "runs").glob(f"*/{STATUS_FILE}"):
        try:
            updated = json.loads(status_path.read_text()).get("updated", "")
        except (OSError, ValueError):
            continue
        candidates.append((updated, status_path.stat().st_mtime, status_path.parent))
    if not candidates:
        raise PipelineError(f"no pipeline run under {root / 'runs'}; run one first, e.g. "
                            "`python -m medcore run --profile ci`, or pass run_dir")
    return max(candidates)[2]


def _placeholder_notebook(name: str, status: dict[str, Any]) -> dict[str, Any]:
    failed = status.get("failed") or {}
    why = (f"The pipeline stopped at `{failed.get('notebook')}` ({failed.get('ename')}: {failed.get('evalue')})."
           if failed else "This notebook was not part of the pipeline run this book was built from.")
    title = name.removesuffix(".ipynb").replace("_", " ", 1).replace("_", " ")
    return {"cells": [{"cell_type": "markdown", "metadata": {}, "source": f"# {title}\n\nNot executed. {why}\n"}],
            "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def copy_executed_notebooks(run_dir: Path, book_dir: Path) -> list[str]:
    """Copy the executed notebooks of ``run_dir`` to ``book_dir/notebooks/`` (emptied first); a numbered
    notebook the run does not have becomes a one-cell page that says so. Returns the names copied."""
    target = book_dir / "notebooks"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    status = read_status(run_dir)
    copied = []
    for name in NOTEBOOKS:
        source = run_dir / name
        if source.is_file() and name in status.get("finished", [name]):
            shutil.copy2(source, target / name)
            copied.append(name)
        elif source.is_file():  # the notebook that failed: show it, error included
            shutil.copy2(source, target / name)
        else:
            (target / name).write_text(json.dumps(_placeholder_notebook(name, status), indent=1))
    return copied


def write_generated_pages(run_dir: Path, book_dir: Path, root: Path) -> None:
    """Write ``book/_generated/{results,performance,run}.md`` from run records (included by the pages)."""
    out = book_dir / "_generated"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "results.md").write_text(results_markdown(run_dir / "results", out))
    (out / "performance.md").write_text(benchmark_markdown(root / "results" / "bench", out))
    (out / "run.md").write_text(run_markdown(run_dir))


def build_book(run_dir: str | Path | None = None, out: str | Path = "_build", *, root: str | Path | None = None,
               quiet: bool = True, progress: bool = True) -> Path:
    """Build the Jupyter Book from the executed notebooks of a pipeline run; return the HTML folder.

    ``run_dir`` defaults to :func:`last_run_dir`. Its executed notebooks are copied into ``book/notebooks/``
    and the record-driven page parts into ``book/_generated/`` (both generated: not to be edited), then
    ``jupyter-book build <root>`` runs in a subprocess with notebook execution off (``_config.yml``), so the
    book shows exactly what the pipeline computed. ``out`` is the build folder (relative paths are taken
    from the project root); the HTML lands in ``<out>/html``, the start page is ``<out>/html/index.html``.
    Raises :class:`PipelineError` with the build log's tail if Sphinx fails. ``quiet=False`` prints Sphinx's
    full log (warnings included) after the build; ``progress`` prints where the book is.
    """
    root = Path(root).resolve() if root else project_root()
    run_dir = Path(run_dir).resolve() if run_dir else last_run_dir(root)
    if not run_dir.is_dir():
        raise PipelineError(f"run folder {run_dir} does not exist")
    book_dir = root / "book"
    copy_executed_notebooks(run_dir, book_dir)
    write_generated_pages(run_dir, book_dir, root)

    out = Path(out) if Path(out).is_absolute() else root / out
    # jupyter-book writes to <path-output>/_build/html; build into a scratch parent when `out` is not "_build"
    scratch = None
    if out.name != "_build":
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".medcore-book-", dir=out.parent))
    path_output = out.parent if scratch is None else scratch
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
           "--path-output", str(path_output), "--all"]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        log = (proc.stdout + proc.stderr)[-6000:]
        raise PipelineError(f"jupyter-book build failed (exit {proc.returncode}):\n{log}")
    if scratch is not None:
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(scratch / "_build"), str(out))
        shutil.rmtree(scratch, ignore_errors=True)
    html = out / "html"
    if not (html / "index.html").is_file():
        raise PipelineError(f"jupyter-book finished but {html / 'index.html'} is missing:\n{proc.stdout[-3000:]}")
    _say(not quiet, proc.stdout + proc.stderr)
    _say(progress, f"book of {run_dir} built: {html / 'index.html'}")
    return html


# ---- tables from run records (notebook 05 and the book's generated pages) -------------------------------------

RANDOM_LABEL = "random weights (accuracy meaningless)"


def _get(row: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = row.get(key) if hasattr(row, "get") else None
        if value is not None and not (isinstance(value, float) and value != value):
            return value
    return default


TUNED_ROLES = ("fine-tuned", "finetuned")  # this module writes the first; accept both
BASE_ROLES = ("zero-shot", "base")
_STAGE_OF_ROLE = {"train": "finetune", "footprint": "quantize", "zero-shot": "evaluate", "zero-shot-bf16": "evaluate",
                  "fine-tuned": "evaluate", "finetuned": "evaluate", "base": "evaluate"}


def stage_of(row: Any) -> str:
    """A record's stage: its ``stage`` metric, else inferred from ``role`` (records of ``medcore.workflows``)."""
    return _get(row, "stage") or _STAGE_OF_ROLE.get(str(_get(row, "role", default="")), "?")


def _baseline(row: Any, evals) -> str | None:
    """The zero-shot record a fine-tuned record is compared with: its ``baseline_run``, else the zero-shot record
    of the same config name and precision (records of ``medcore.workflows`` name no baseline)."""
    if _get(row, "baseline_run"):
        return _get(row, "baseline_run")
    if str(_get(row, "role", default="")) not in TUNED_ROLES:
        return None
    for _, other in evals.iterrows():
        if (str(_get(other, "role", default="")) in BASE_ROLES
                and _get(other, "config.name") == _get(row, "config.name")
                and _get(other, "precision") == _get(row, "precision")):
            return other["run_id"]
    return None


def weights_label(row: Any) -> str:
    """"real", RANDOM_LABEL or "unknown", from a run's ``real_weights`` (metrics or environment) or model source."""
    real = _get(row, "real_weights", "env.real_weights")
    source = str(_get(row, "model_source", "config.model.source", default=""))
    if real is None and source:
        real = not source.startswith("random:")
    return "unknown" if real is None else "real" if bool(real) else RANDOM_LABEL


def results_table(runs) -> "pd.DataFrame":
    """The study's results table, rebuilt from the measured figures of evaluation records.

    ``runs`` is ``medcore.results.load_runs(results_dir)``. Evaluation records (those with ``accuracy``) give one
    row each: run, model, weights (random-weight runs say so), precision, adapter, size_gb (weights + quantization
    constants in memory, ``footprint_bytes``), accuracy with ci_low / ci_high and n, peak_memory_gb, latency_ms
    (median, batch 1), and improvement_pct: (accuracy - base accuracy) / base accuracy x 100 against the record
    named by ``baseline_run`` (recomputed here from the two accuracies, not copied from the record). Records of
    ``medcore.workflows`` (cost nested under ``cost.``, no ``baseline_run``) are read too: a fine-tuned record is
    then compared with the zero-shot record of the same config name and precision.
    """
    import pandas as pd

    columns = ["run", "model", "weights", "precision", "adapter", "size_gb", "accuracy", "ci_low", "ci_high", "n",
               "peak_memory_gb", "latency_ms", "improvement_pct", "baseline_run"]
    if runs is None or len(runs) == 0 or "accuracy" not in runs.columns:
        return pd.DataFrame(columns=columns)
    evals = runs[runs["accuracy"].notna()]
    accuracy = dict(zip(evals["run_id"], evals["accuracy"]))
    rows = []
    for _, r in evals.iterrows():
        base = _baseline(r, evals)
        before = accuracy.get(base) if base else None
        improvement = (r["accuracy"] - before) / before * 100 if before else float("nan")
        size, peak = _get(r, "footprint_bytes"), _get(r, "peak_memory_bytes", "cost.peak_memory_bytes")
        rows.append({
            "run": r["run_id"], "model": _get(r, "model_source", "config.model.source", default="?"),
            "weights": weights_label(r), "precision": _get(r, "precision", "config.quant.precision", default="?"),
            "adapter": _get(r, "adapter", default="none"),
            "size_gb": size / 1e9 if size is not None else float("nan"),
            "accuracy": float(r["accuracy"]), "ci_low": _get(r, "ci_low", default=float("nan")),
            "ci_high": _get(r, "ci_high", default=float("nan")), "n": _get(r, "n", default=float("nan")),
            "peak_memory_gb": peak / 1e9 if peak is not None else float("nan"),
            "latency_ms": _get(r, "latency_ms_median", "cost.latency_ms_median", "latency_ms", default=float("nan")),
            "improvement_pct": improvement, "baseline_run": base,
        })
    return pd.DataFrame(rows, columns=columns)


def ablation_table(runs) -> "pd.DataFrame":
    """Fine-tuned evaluation records that differ in their config: one row each, with ``setting`` (the differing
    ``section.field=value`` pairs), ``ablation`` (the differing field names), accuracy and its interval and
    ``weights``. Empty when fewer than two fine-tuned records exist."""
    import pandas as pd

    columns = ["run", "setting", "ablation", "accuracy", "ci_low", "ci_high", "n", "weights"]
    if runs is None or len(runs) == 0 or "accuracy" not in runs.columns:
        return pd.DataFrame(columns=columns)
    roles = runs["role"] if "role" in runs.columns else pd.Series("", index=runs.index)
    tuned = runs[runs["accuracy"].notna() & roles.isin(TUNED_ROLES)]
    if len(tuned) < 2:
        return pd.DataFrame(columns=columns)
    config_cols = [c for c in tuned.columns if c.startswith("config.") and c != "config.name"
                   and not c.startswith("config.results_dir")]
    varying = [c for c in config_cols if tuned[c].astype(str).nunique(dropna=False) > 1]
    rows = []
    for _, r in tuned.iterrows():
        keys = [c.removeprefix("config.") for c in varying]
        rows.append({"run": r["run_id"], "setting": ", ".join(f"{k}={r['config.' + k]}" for k in keys) or r["run_id"],
                     "ablation": ", ".join(keys) or "repeat", "accuracy": float(r["accuracy"]),
                     "ci_low": _get(r, "ci_low"), "ci_high": _get(r, "ci_high"), "n": _get(r, "n"),
                     "weights": weights_label(r)})
    return pd.DataFrame(rows, columns=columns)


def format_results_table(table) -> "pd.DataFrame":
    """Human-readable copy of :func:`results_table`: percentages with intervals, GB and ms rounded."""
    import pandas as pd

    def pct(v):
        return "" if pd.isna(v) else f"{v:.1%}"

    def num(v, digits=3):
        return "" if pd.isna(v) else f"{v:.{digits}g}"

    out = pd.DataFrame({
        "run": table["run"], "model": table["model"], "weights": table["weights"], "precision": table["precision"],
        "adapter": table["adapter"], "size (GB)": table["size_gb"].map(num),
        "accuracy [95% CI]": [f"{pct(a)} [{pct(lo)}, {pct(hi)}]" for a, lo, hi in
                              zip(table["accuracy"], table["ci_low"], table["ci_high"])],
        "n": table["n"].map(lambda v: "" if pd.isna(v) else str(int(v))),
        "peak memory (GB)": table["peak_memory_gb"].map(num), "latency (ms)": table["latency_ms"].map(num),
        "improvement": table["improvement_pct"].map(lambda v: "" if pd.isna(v) else f"{v:+.1f} %"),
    })
    return out


def markdown_table(df) -> str:
    """A GitHub/MyST pipe table of a DataFrame (no extra dependency)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def results_markdown(results_dir: str | Path, figure_dir: Path | None = None) -> str:
    """Markdown for the book: the results table of the records in ``results_dir`` and, when ``figure_dir`` is
    given, an accuracy figure saved there as ``accuracy.png`` (linked relative to that folder)."""
    from medcore.results import load_runs

    table = results_table(load_runs(results_dir))
    if table.empty:
        return (f"*No evaluation record in `{Path(results_dir).name}/` of this run: the pipeline did not reach "
                "notebook 04, or it was run with other notebooks.*\n")
    text = markdown_table(format_results_table(table))
    if (table["weights"] != "real").any():
        text += (f"\n*Rows marked \u201c{RANDOM_LABEL}\u201d come from random-weight models: they test the "
                 "pipeline, their accuracy says nothing about medicine.*\n")
    if figure_dir is not None:
        from medcore import plots

        figure_dir.mkdir(parents=True, exist_ok=True)
        fig = plots.results_overview(table, title="Size, accuracy (95% Wilson interval) and latency per run")
        fig.savefig(figure_dir / "accuracy.png", dpi=110, bbox_inches="tight")
        text += "\n![Size, accuracy with its 95% interval and latency of every evaluated run](accuracy.png)\n"
    return text


def benchmark_markdown(bench_dir: str | Path, figure_dir: Path | None = None) -> str:
    """Markdown for the performance page from the benchmark records in ``bench_dir`` (``results/bench/``):
    per record, the machine and versions, its scalar metrics, and every table (list of records) it holds."""
    import pandas as pd

    from medcore.results import load_run, run_dirs

    records = run_dirs(bench_dir)
    if not records:
        return (f"```{{note}}\nNo benchmark record yet: `{Path(bench_dir).name}/` under `results/` is empty or "
                "missing. Run the benchmark on a GPU and commit its record; this page then shows it.\n```\n")
    parts = []
    for path in records:
        rec = load_run(path)
        env, metrics = rec.get("environment") or {}, rec.get("metrics") or {}
        packages = env.get("packages") or {}
        parts.append(f"### {path.name}\n")
        facts = {"device": env.get("device"), "python": env.get("python"), "git commit": env.get("git_commit"),
                 **{k: v for k, v in packages.items() if k in ("torch", "transformers", "peft", "bitsandbytes")},
                 "weights": weights_label({"real_weights": env.get("real_weights", metrics.get("real_weights"))})}
        parts.append(markdown_table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        if scalars:
            parts.append("\n" + markdown_table(pd.DataFrame({"metric": list(scalars),
                                                             "value": [_fmt(v) for v in scalars.values()]})))
        for key, value in metrics.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                frame = pd.DataFrame(value).map(_fmt)
                parts.append(f"\n**{key}**\n\n" + markdown_table(frame))
            elif isinstance(value, dict) and value:
                flat = pd.json_normalize(value, sep=".").iloc[0]
                parts.append(f"\n**{key}**\n\n" + markdown_table(
                    pd.DataFrame({"": flat.index, "value": [_fmt(v) for v in flat.values]})))
        parts.append("\n")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def run_markdown(run_dir: str | Path) -> str:
    """Markdown for the reproducibility page: the command that reproduces the run, what finished, the machine."""
    import pandas as pd

    from medcore.results import load_run, run_dirs

    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if not status:
        return f"*`{run_dir.name}` has no `{STATUS_FILE}`.*\n"
    sets = " ".join(f"--set {o}" for o in status.get("overrides", []))
    lines = ["```bash", f"python -m medcore run --profile {status.get('profile')} {sets}".rstrip(), "```", ""]
    seconds = status.get("seconds", {})
    nb = pd.DataFrame({"notebook": status.get("notebooks", []),
                       "finished": ["yes" if n in status.get("finished", []) else "no"
                                    for n in status.get("notebooks", [])],
                       "seconds": [_fmt(seconds.get(n, "")) for n in status.get("notebooks", [])]})
    lines.append(markdown_table(nb))
    if status.get("failed"):
        f = status["failed"]
        lines.append(f"\nThe run stopped at `{f.get('notebook')}`: `{f.get('ename')}: {f.get('evalue')}`.\n")
    records = run_dirs(run_dir / "results")
    if records:
        env = load_run(records[-1]).get("environment") or {}
        facts = {"device": env.get("device"), "platform": env.get("platform"), "python": env.get("python"),
                 "CPU cores": env.get("cpu_count"), "torch threads": env.get("torch_threads"),
                 "git commit": env.get("git_commit"), "uncommitted changes": env.get("git_dirty"),
                 **(env.get("packages") or {})}
        lines.append(f"\nEnvironment (from the record `{records[-1].name}`):\n")
        lines.append(markdown_table(pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})))
    lines.append(f"\nThe full validated config is in `{STATUS_FILE}` of the run folder and in every run record.\n")
    return "\n".join(lines)


# ---- what the notebooks compute (the notebooks only call these and display the results) ---------------------

def config_digest(cfg: RunConfig, sections: Sequence[str] | None = None) -> str:
    """Short hash of the config (or of some sections), without ``name`` and ``results_dir``: runs of different
    settings in one run folder get different run ids; a rerun of the same settings replaces its records."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "results_dir")}
    if sections is not None:
        values = {k: values[k] for k in sections}
    import hashlib

    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


BASE_SECTIONS = ("data", "model", "quant", "eval")  # what a base-model evaluation depends on


def run_id(cfg: RunConfig, stage: str) -> str:
    """``<name>-<stage>-<digest>``; base-model stages hash only the sections they depend on."""
    base = stage.startswith(("data", "quantize", "zero-shot"))
    return f"{cfg.name}-{stage}-{config_digest(cfg, BASE_SECTIONS if base else None)}"


def train_dir(run_dir: str | Path) -> Path:
    """Where notebook 03 trains (checkpoints, ``adapter/``, ``train_result.json``) and 04 finds the adapter."""
    return Path(run_dir) / "train"


def is_real(cfg: RunConfig) -> bool:
    from medcore.models import parse_model_source

    return parse_model_source(cfg.model.source).real_weights


def label_weights(df, cfg: RunConfig):
    """``df`` with a first column ``weights``: "real" or RANDOM_LABEL, so no table hides a random-weight run."""
    out = df.copy()
    if "weights" in out.columns:
        out = out.drop(columns="weights")
    out.insert(0, "weights", "real" if is_real(cfg) else RANDOM_LABEL)
    return out


def weights_note(cfg: RunConfig) -> str:
    """Markdown that says what the model's weights are; notebooks display it under their first heading."""
    from medcore.models import parse_model_source

    src = parse_model_source(cfg.model.source)
    if not src.real_weights:
        return (f"**Random weights** (`{cfg.model.source}`): this run checks the pipeline. Every accuracy, loss and "
                "calibration figure below is meaningless for medicine; sizes and timings are those of the random "
                "model's shape.")
    if src.kind == "embedded":
        return (f"Real weights: `{cfg.model.source}` (converted from a 4-bit GGUF file, so its bf16 weights are "
                "dequantized from 4 bits).")
    return f"Real weights: `{cfg.model.source}`."


def precision_label(precision: str, double_quant: bool) -> str:
    """"nf4+dq" for NF4 with double quantization; bf16 and int8 have no such option."""
    return f"{precision}+dq" if double_quant and precision in ("nf4", "fp4") else precision


def parse_precision_label(label: str, compute_dtype: str = "bfloat16"):
    """QuantConfig for "bf16", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq"."""
    from medcore.config import PRECISIONS, QuantConfig

    precision, _, suffix = label.partition("+")
    if precision not in PRECISIONS or suffix not in ("", "dq"):
        raise ValueError(f"precision preset {label!r} unknown; use one of bf16, int8, nf4, nf4+dq, fp4, fp4+dq")
    return QuantConfig(precision=precision, double_quant=suffix == "dq", compute_dtype=compute_dtype)


def _fits(tokenizer, max_length: int):
    from medcore.prompts import encode_prompt

    def ok(record: dict) -> bool:
        try:
            encode_prompt(tokenizer, record["question"], record["options"], max_length)
            return True
        except ValueError:
            return False
    return ok


def prepare_data(cfg: RunConfig, tokenizer=None) -> dict[str, Any]:
    """The training and evaluation questions of a config, as every notebook uses them.

    * ``data.train_source`` None: the ``data.eval_split`` of ``data.source`` is split by subject into
      ``data.train_size`` training questions and the disjoint rest (``stratified_split``, ``data.seed``);
    * else: training questions come from ``train_source`` / ``train_split`` (a stratified subset of
      ``train_size`` if set), evaluation questions from ``source`` / ``eval_split``.

    ``data.eval_limit`` keeps a stratified subset of the evaluation questions. With a ``tokenizer``, questions
    whose four choices alone do not fit ``data.max_length`` tokens are dropped first (truncation keeps the
    choices, so it cannot help) and counted in ``dropped``. Returns ``{"train", "eval", "dropped", "sources"}``.
    """
    from medcore.data import load_medmcqa, require_answers, stratified_split, stratified_subset

    d = cfg.data
    dropped = {"train": 0, "eval": 0}

    def fit(ds, which):
        if tokenizer is None:
            return ds
        kept = ds.filter(_fits(tokenizer, d.max_length), desc=f"fit {which} to max_length")
        dropped[which] += len(ds) - len(kept)
        return kept

    evaluation = fit(require_answers(load_medmcqa(d.source, d.eval_split, d.on_invalid), "evaluation"), "eval")
    if d.train_source is None:
        train, evaluation = stratified_split(evaluation, train_size=d.train_size, seed=d.seed)
        sources = {"train": f"{d.source} [{d.eval_split}], subject-stratified part",
                   "eval": f"{d.source} [{d.eval_split}], the disjoint rest"}
    else:
        train = fit(require_answers(load_medmcqa(d.train_source, d.train_split, d.on_invalid), "training"), "train")
        if d.train_size is not None and d.train_size < len(train):
            train = stratified_subset(train, d.train_size, seed=d.seed)
        sources = {"train": f"{d.train_source} [{d.train_split}]", "eval": f"{d.source} [{d.eval_split}]"}
    if d.eval_limit is not None and d.eval_limit < len(evaluation):
        evaluation = stratified_subset(evaluation, d.eval_limit, seed=d.seed)
        sources["eval"] += f", stratified subset of {d.eval_limit}"
    return {"train": train, "eval": evaluation, "dropped": dropped, "sources": sources}


def split_overview(data: dict[str, Any]) -> "pd.DataFrame":
    """One row per split: questions, subjects, single/multi-answer counts, with explanation, dropped, source."""
    import pandas as pd

    rows = []
    for split in ("train", "eval"):
        ds = data[split]
        kinds = pd.Series(ds["choice_type"]).fillna("unknown").value_counts()
        rows.append({"split": split, "questions": len(ds), "subjects": len(set(ds["subject"])),
                     "single": int(kinds.get("single", 0)), "multi": int(kinds.get("multi", 0)),
                     "choice type unknown": int(kinds.get("unknown", 0)),
                     "with explanation": sum(e is not None for e in ds["explanation"]),
                     "dropped (choices too long)": data["dropped"][split], "source": data["sources"][split]})
    return pd.DataFrame(rows)


def category_counts(data: dict[str, Any], column: str) -> "pd.DataFrame":
    """Counts per ``column`` (subject, tier, choice_type, answer letter) and split: columns column, split, count,
    share (within the split)."""
    import pandas as pd

    from medcore.data import subject_tier

    parts = []
    for split in ("train", "eval"):
        ds = data[split]
        if column == "tier":
            values = [subject_tier(s) for s in ds["subject"]]
        elif column == "answer":
            values = ["ABCD"[a] for a in ds["answer"]]
        else:
            values = ds[column]
        counts = pd.Series(values, dtype=object).fillna("unknown").value_counts()
        parts.append(pd.DataFrame({column: counts.index, "split": split, "count": counts.to_numpy(),
                                   "share": counts.to_numpy() / max(len(ds), 1)}))
    return pd.concat(parts, ignore_index=True)


def prompt_lengths(data: dict[str, Any], tokenizer, max_length: int) -> "pd.DataFrame":
    """Prompt length in tokens (the scoring prompt, BOS included) per question: split, id, subject, length,
    untruncated (before cutting to ``max_length``), truncated."""
    import pandas as pd

    from medcore.prompts import encode_for_scoring, format_prompt

    rows = []
    for split in ("train", "eval"):
        for r in data[split]:
            enc = encode_for_scoring(r, tokenizer, max_length)
            full = len(tokenizer.encode(format_prompt(r["question"], r["options"]), add_special_tokens=False))
            rows.append({"split": split, "id": r["id"], "subject": r["subject"], "length": enc["length"],
                         "untruncated": full + (tokenizer.bos_token_id is not None), "truncated": enc["truncated"]})
    return pd.DataFrame(rows)


def length_summary(lengths) -> "pd.DataFrame":
    """Mean, median, p90, p99, max and truncated count of prompt lengths per split."""
    g = lengths.groupby("split", sort=False)
    out = g["length"].describe(percentiles=[0.5, 0.9, 0.99])[["count", "mean", "50%", "90%", "99%", "max"]]
    out["truncated"] = g["truncated"].sum()
    return out.rename(columns={"50%": "median", "90%": "p90", "99%": "p99"}).reset_index()


def _free(model) -> None:
    import gc

    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare_precisions(cfg: RunConfig, records: Sequence[dict], presets: Sequence[str] = ("bf16", "int8", "nf4", "nf4+dq"),
                       n_latency: int | None = None, batch_size: int | None = None, disk: bool = True,
                       progress: bool = False) -> dict[str, Any]:
    """Load ``cfg.model.source`` at each precision preset and measure it (notebook 02).

    For each preset: the footprint (``quantize.footprint``: weights by module kind, quantization constants,
    buffers, bytes on disk), the relative error of every quantized layer against the bf16 weights
    (``quantize.quantization_error``), and the scoring cost on ``records`` (``evaluate.measure_cost``: batch-1
    latency over ``n_latency`` questions, throughput at batch 1 and ``batch_size``, peak memory). A preset that
    cannot load here (e.g. int8 without a supported backend) gets a row with its error in ``status``.

    Returns ``summary`` (one row per preset), ``footprint`` (long: precision, kind, bytes, for
    ``plots.footprint_bars``), ``errors`` (layer, kind, precision, error) and ``cost`` (the raw measurements).
    """
    import pandas as pd

    from medcore import evaluate, quantize
    from medcore.models import load_tokenizer

    n_latency = n_latency or cfg.eval.latency_batches
    batch_size = batch_size or cfg.eval.batch_size
    tokenizer = load_tokenizer(cfg.model.source)
    reference = quantize.load_quantized(cfg.model.source, parse_precision_label("bf16", cfg.quant.compute_dtype))
    summary, long, errors, costs = [], [], [], {}
    for label in presets:
        qcfg = parse_precision_label(label, cfg.quant.compute_dtype)
        try:
            model = reference if label == "bf16" else quantize.load_quantized(cfg.model.source, qcfg)
            fp = quantize.footprint(model, disk=disk)
            cost = evaluate.measure_cost(model, tokenizer, records, batch_sizes=(1, batch_size),
                                         n_latency=n_latency, max_length=cfg.data.max_length)
        except Exception as err:  # a backend this machine lacks: say so in the table, measure the others
            summary.append({"precision": label, "status": f"failed: {type(err).__name__}: {str(err)[:160]}"})
            continue
        status = "ok"
        if label != "bf16":
            try:
                err_table = quantize.quantization_error(reference, model)
                errors.append(err_table.assign(precision=label).rename(columns={"rel_error": "error"}))
            except Exception as err:  # e.g. int8 on a CPU backend that keeps no SCB scales
                status = f"ok; layer error not measurable: {type(err).__name__}: {str(err)[:120]}"
            _free(model)
        for kind, nbytes in fp["by_kind"].items():
            if nbytes:
                long.append({"precision": label, "kind": kind, "bytes": nbytes})
        if fp["quant_constant_bytes"]:
            long.append({"precision": label, "kind": "quant constants", "bytes": fp["quant_constant_bytes"]})
        if fp["buffer_bytes"]:
            long.append({"precision": label, "kind": "buffers", "bytes": fp["buffer_bytes"]})
        costs[label] = cost
        summary.append({"precision": label, "status": status, "total_bytes": fp["total_bytes"],
                        "weight_bytes": fp["weight_bytes"], "quant_constant_bytes": fp["quant_constant_bytes"],
                        "disk_bytes": fp.get("disk_bytes"), "latency_ms": cost["latency_ms_median"],
                        "latency_ms_p90": cost["latency_ms_p90"], "best_qps": cost["best_qps"],
                        "peak_memory_bytes": cost["peak_memory_bytes"], "peak_memory_mb": cost["peak_memory_bytes"] / 1e6,
                        "peak_memory_kind": cost["peak_memory_kind"],
                        "device": cost["conditions"]["device"]})
    _free(reference)
    table = pd.DataFrame(summary)
    if "total_bytes" in table and "bf16" in set(table["precision"]):
        bf16 = table.loc[table["precision"] == "bf16", "total_bytes"].iloc[0]
        table["size_vs_bf16"] = table["total_bytes"] / bf16
    return {"summary": table, "footprint": pd.DataFrame(long, columns=["precision", "kind", "bytes"]),
            "errors": pd.concat(errors, ignore_index=True) if errors else
            pd.DataFrame(columns=["layer", "kind", "shape", "numel", "error", "precision"]),
            "cost": costs}


def error_summary(errors) -> "pd.DataFrame":
    """Per precision and module kind: layers, mean / max relative error."""
    if errors.empty:
        return errors
    return (errors.groupby(["precision", "kind"], sort=False)["error"]
            .agg(layers="size", mean="mean", max="max").reset_index())


def finetune(cfg: RunConfig, run_dir: str | Path, resume: bool = False, eval_loss_questions: int = 64,
             data: dict[str, Any] | None = None) -> dict[str, Any]:
    """QLoRA fine-tuning of a config (notebook 03); returns ``result`` (``train.TrainResult``), ``trainable``,
    ``record`` (the run record's path) and ``history`` (a DataFrame for ``plots.loss_curves``).

    The base model is loaded at ``cfg.quant``, the adapter attached (``lora.attach_adapter``, seeded with
    ``train.seed``), trained with ``train.train`` in :func:`train_dir` (emptied first unless ``resume``, which
    continues from its last checkpoint). The evaluation loss uses a stratified subset of
    ``eval_loss_questions`` evaluation questions (its trend, not model selection: nothing is chosen by it).
    """
    import pandas as pd
    import torch

    from medcore import lora, quantize, train
    from medcore.data import stratified_subset
    from medcore.models import load_tokenizer
    from medcore.results import write_run_record

    out = train_dir(run_dir)
    if out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.model.source)
    data = data or prepare_data(cfg, tokenizer)
    eval_small = data["eval"]
    if eval_loss_questions and eval_loss_questions < len(eval_small):
        eval_small = stratified_subset(eval_small, eval_loss_questions, seed=cfg.data.seed)
    model = quantize.load_quantized(cfg.model.source, cfg.quant)
    torch.manual_seed(cfg.train.seed)
    model = lora.attach_adapter(model, cfg.lora, quantized=cfg.quant.precision != "bf16")
    trainable = lora.trainable_parameters(model)
    result = train.train(cfg, model, tokenizer, data["train"], eval_small if eval_loss_questions else None, out,
                         resume=resume)
    metrics = {"stage": "finetune", "model_source": cfg.model.source, "real_weights": is_real(cfg),
               "precision": precision_label(cfg.quant.precision, cfg.quant.double_quant),
               "adapter": adapter_label(cfg), "train_questions": len(data["train"]),
               "eval_loss_questions": len(eval_small), "trainable_parameters": trainable["trainable"],
               "total_parameters": trainable["total"], "trainable_percent": trainable["percent"],
               "adapter_dir": result.adapter_dir, **result.metrics}
    record = write_run_record(cfg.results_dir, run_id(cfg, "finetune"), cfg.to_dict(), metrics,
                              loss_history=result.loss_history, extra={"real_weights": is_real(cfg)}, overwrite=True)
    _free(model)
    return {"result": result, "trainable": trainable, "record": record,
            "history": pd.DataFrame(result.loss_history)}


def adapter_label(cfg: RunConfig) -> str:
    lo = cfg.lora
    return "none" if lo.method == "none" else f"{lo.method} r={lo.r} alpha={lo.alpha} {lo.targets}"


def _evaluation_metrics(cfg: RunConfig, role: str, precision: str, adapter: str, summary: dict, cost: dict,
                        fp: dict) -> dict[str, Any]:
    keep = ("n", "correct", "accuracy", "ci_low", "ci_high", "truncated", "ece", "mean_confidence",
            "position_bias_pvalue", "by_subject", "by_tier", "by_choice_type", "letters", "reliability")
    return {"stage": "evaluate", "role": role, "model_source": cfg.model.source, "real_weights": is_real(cfg),
            "precision": precision, "adapter": adapter, **{k: summary[k] for k in keep if k in summary},
            "footprint_bytes": fp["total_bytes"], "weight_bytes": fp["weight_bytes"],
            "quant_constant_bytes": fp["quant_constant_bytes"],
            **{k: cost[k] for k in ("latency_ms_median", "latency_ms_p90", "latency_n", "best_qps", "best_batch_size",
                                    "peak_memory_bytes", "peak_memory_kind", "throughput", "conditions")}}


def evaluate_run(cfg: RunConfig, run_dir: str | Path, with_bf16_base: bool = True, cost_questions: int = 64,
                 data: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Score the base model and the fine-tuned one on the evaluation questions and record both (notebook 04).

    Models: the base at ``cfg.quant`` ("zero-shot"), optionally the base in bf16 ("zero-shot-bf16"; for the embedded model
    that is dequantized from 4 bits), and the base at ``cfg.quant`` with the adapter from :func:`train_dir`
    ("fine-tuned"; missing adapter: an error naming notebook 03). Each gets ``evaluate.score_choices``,
    ``evaluate.accuracy_summary``, ``evaluate.measure_cost`` on ``cost_questions`` questions and
    ``quantize.footprint``, and a run record with its predictions. The fine-tuned record names the base record
    (``baseline_run``) and holds the exact McNemar test and a paired bootstrap interval of the difference.

    Returns ``preds`` and ``summaries`` (dicts by role), ``records`` (role -> path), ``comparison`` (the paired
    test, None without an adapter) and ``cost`` (one row per model: footprint, latency, throughput, peak memory).
    """
    import numpy as np
    from peft import PeftModel

    from medcore import evaluate, quantize, stats
    from medcore.models import load_tokenizer
    from medcore.results import write_run_record

    adapter_dir = train_dir(run_dir) / "adapter"
    if cfg.lora.method != "none" and not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter in {adapter_dir}: run notebooks/03_finetune.ipynb for this run first")
    tokenizer = load_tokenizer(cfg.model.source)
    data = data or prepare_data(cfg, tokenizer)
    records = list(data["eval"])
    cost_records = records[:cost_questions]
    base_label = precision_label(cfg.quant.precision, cfg.quant.double_quant)
    plan = [("zero-shot-bf16", "bf16")] if with_bf16_base and cfg.quant.precision != "bf16" else []
    plan += [("zero-shot", base_label)]
    if cfg.lora.method != "none":
        plan += [("fine-tuned", base_label)]
    preds, summaries, paths, costs = {}, {}, {}, []
    model = None
    for role, label in plan:
        if role == "fine-tuned":
            model = PeftModel.from_pretrained(model, str(adapter_dir))  # onto the base model scored just before
            quantize.disable_cpu_repack(model)
        else:
            if model is not None:
                _free(model)
            model = quantize.load_quantized(cfg.model.source, parse_precision_label(label, cfg.quant.compute_dtype))
        df = evaluate.score_choices(model, tokenizer, records, batch_size=cfg.eval.batch_size,
                                    max_length=cfg.data.max_length, progress=progress)
        summary = evaluate.accuracy_summary(df)
        cost = evaluate.measure_cost(model, tokenizer, cost_records, batch_sizes=(1, cfg.eval.batch_size),
                                     n_latency=cfg.eval.latency_batches, max_length=cfg.data.max_length)
        fp = quantize.footprint(model, disk=False)
        metrics = _evaluation_metrics(cfg, role, label, adapter_label(cfg) if role == "fine-tuned" else "none",
                                      summary, cost, fp)
        if role == "fine-tuned":
            base = preds["zero-shot"]
            metrics["baseline_run"] = run_id(cfg, "zero-shot")
            metrics["mcnemar"] = stats.mcnemar_exact(base["correct"], df["correct"])
            diff = df["correct"].to_numpy(float) - base["correct"].to_numpy(float)
            metrics["difference"] = float(diff.mean())
            metrics["difference_ci"] = list(stats.bootstrap_interval(diff, seed=cfg.data.seed))
            metrics["improvement_rel"] = stats.relative_improvement(summaries["zero-shot"]["accuracy"], summary["accuracy"])
        config = cfg.to_dict()
        if role != "fine-tuned":
            config["lora"] = {"method": "none"}
        paths[role] = write_run_record(cfg.results_dir, run_id(cfg, role), config, metrics, predictions=df,
                                       extra={"real_weights": is_real(cfg)}, overwrite=True)
        preds[role], summaries[role] = df, summary
        costs.append({"model": role, "precision": label, "footprint_bytes": fp["total_bytes"],
                      "latency_ms": cost["latency_ms_median"], "latency_ms_p90": cost["latency_ms_p90"],
                      "best_qps": cost["best_qps"], "best_batch_size": cost["best_batch_size"],
                      "peak_memory_mb": cost["peak_memory_bytes"] / 1e6, "peak_memory_kind": cost["peak_memory_kind"]})
    if model is not None:
        _free(model)
    comparison = None
    if "fine-tuned" in preds:
        base, tuned = preds["zero-shot"], preds["fine-tuned"]
        mc = stats.mcnemar_exact(base["correct"], tuned["correct"])
        diff = tuned["correct"].to_numpy(float) - base["correct"].to_numpy(float)
        low, high = stats.bootstrap_interval(diff, seed=cfg.data.seed)
        comparison = {"base accuracy": summaries["zero-shot"]["accuracy"], "fine-tuned accuracy": summaries["fine-tuned"]["accuracy"],
                      "difference": float(np.mean(diff)), "difference 95% CI": (low, high),
                      "relative improvement": stats.relative_improvement(summaries["zero-shot"]["accuracy"],
                                                                         summaries["fine-tuned"]["accuracy"]),
                      "only base right (b)": mc["b"], "only fine-tuned right (c)": mc["c"],
                      "McNemar exact p": mc["pvalue"], "questions": mc["n"]}
    import pandas as pd

    return {"preds": preds, "summaries": summaries, "records": paths, "comparison": comparison,
            "cost": pd.DataFrame(costs)}


def summary_table(summaries: dict[str, dict]) -> "pd.DataFrame":
    """One row per model: accuracy with interval, n, ECE, mean confidence, position-bias p-value."""
    import pandas as pd

    keys = ("n", "correct", "accuracy", "ci_low", "ci_high", "ece", "mean_confidence", "position_bias_pvalue")
    return pd.DataFrame([{"model": role, **{k: s.get(k) for k in keys}} for role, s in summaries.items()])


def breakdown(summaries: dict[str, dict], by: str) -> "pd.DataFrame":
    """Long table of ``by_<by>`` accuracies (group, model, n, accuracy, ci_low, ci_high) for
    ``plots.accuracy_by_group(..., group=by)``."""
    import pandas as pd

    parts = [s[f"by_{by}"].assign(model=role) for role, s in summaries.items() if f"by_{by}" in s]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def predictions_long(preds: dict[str, Any]) -> "pd.DataFrame":
    """Predictions of several models in one frame (model, id, answer, prediction, correct, confidence) for
    ``plots.reliability_diagram`` and ``plots.position_bias``."""
    import pandas as pd

    return pd.concat([df.assign(model=role).rename(columns={"pred": "prediction", "prob": "confidence"})
                      [["model", "id", "answer", "prediction", "correct", "confidence"]]
                      for role, df in preds.items()], ignore_index=True)


def record_stage(cfg: RunConfig, stage: str, metrics: dict[str, Any], loss_history=None) -> Path:
    """Write the run record ``run_id(cfg, stage)`` of a notebook's measurements (replacing an older one)."""
    from medcore.results import write_run_record

    metrics = {"stage": stage, "model_source": cfg.model.source, "real_weights": is_real(cfg), **metrics}
    return write_run_record(cfg.results_dir, run_id(cfg, stage), cfg.to_dict(), metrics, loss_history=loss_history,
                            extra={"real_weights": is_real(cfg)}, overwrite=True)


def records_overview(runs) -> "pd.DataFrame":
    """Every record of a results folder: run, stage, role, weights, model, precision, adapter, git commit."""
    import pandas as pd

    rows = [{"run": r["run_id"], "stage": stage_of(r), "role": _get(r, "role", default=""),
             "weights": weights_label(r), "model": _get(r, "model_source", "config.model.source", default="?"),
             "precision": _get(r, "precision", default=""), "adapter": _get(r, "adapter", default=""),
             "device": _get(r, "env.device", default=""), "git commit": str(_get(r, "env.git_commit", default=""))[:10]}
            for _, r in runs.iterrows()]
    return pd.DataFrame(rows, columns=["run", "stage", "role", "weights", "model", "precision", "adapter", "device",
                                       "git commit"])


def stage_table(runs, stage: str, key: str) -> "pd.DataFrame":
    """The table ``key`` (a list of records in metrics) of every record of ``stage``, with run and weights
    columns; e.g. ``stage_table(runs, "quantize", "summary")``."""
    import pandas as pd

    parts = []
    for _, r in runs.iterrows():
        value = r.get(key)
        if stage_of(r) == stage and isinstance(value, list) and value:
            parts.append(pd.DataFrame(value).assign(run=r["run_id"], weights=weights_label(r)))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table[["run", "weights", *[c for c in table.columns if c not in ("run", "weights")]]]


def loss_histories(results_dir: str | Path) -> "pd.DataFrame":
    """Loss history of every fine-tuning record in long form: run, step, split (train/eval), loss."""
    import pandas as pd

    from medcore.results import load_loss_history, run_dirs

    parts = []
    for path in run_dirs(results_dir):
        h = load_loss_history(path)
        if h.empty or "step" not in h:
            continue
        for column, split in (("loss", "train"), ("eval_loss", "eval")):
            if column in h:
                part = h[["step", column]].dropna().rename(columns={column: "loss"})
                parts.append(part.assign(split=split, run=path.name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "loss", "split", "run"])


def as_table(mapping: dict[str, Any]) -> "pd.DataFrame":
    """A dict as a two-column table (quantity, value) for display; tuples become "[low, high]"."""
    import pandas as pd

    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return "[" + ", ".join(_fmt(x) for x in v) + "]"
        return _fmt(v)
    return pd.DataFrame({"quantity": list(mapping), "value": [show(v) for v in mapping.values()]})
