"""The papermill pipeline: the ci profile end to end, resume, and stopping at the first failing notebook.

The end-to-end test runs notebooks/01..05 on the tiny random-weight model (a few minutes on a busy 2-core CPU,
so it is marked slow); the failure and resume tests use one-cell notebooks in a temporary folder (seconds).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from medcore.config import ConfigError
from medcore.flows import book, pipeline as mp
from medcore.report import tables as an
from medcore.records import load_runs

ROOT = Path(__file__).resolve().parents[1]
DEV_JSON = ROOT.parent / "shared" / "medmcqa" / "dev.json"


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


# ---- the ci profile, end to end ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    if not DEV_JSON.is_file():
        pytest.skip(f"MedMCQA data not found at {DEV_JSON}")
    run_dir = tmp_path_factory.mktemp("ci-run")
    assert mp.run_pipeline("ci", [], run_dir=run_dir, progress=False) == run_dir
    return run_dir


@pytest.mark.slow
def test_ci_pipeline_executes_every_notebook_and_writes_records(ci_run):
    status = mp.read_status(ci_run)
    assert status["finished"] == list(mp.NOTEBOOKS) and status["failed"] is None
    assert status["profile"] == "ci" and status["config"]["model"]["source"] == "random:tiny-gemma"
    for name in mp.NOTEBOOKS:
        nb = nbformat.read(ci_run / name, as_version=4)
        assert not _errors(nb), (name, _errors(nb))
        assert any(c.metadata.get("tags") == ["injected-parameters"] for c in nb.cells), name
        stderr = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("name") == "stderr"]
        assert not any("Traceback" in t for t in stderr), (name, stderr)
    runs = load_runs(ci_run / "results")
    assert sorted(runs["run_id"]) == ["ci-bf16-zero-shot", "ci-data", "ci-fine-tuned", "ci-footprint", "ci-train",
                                      "ci-zero-shot"]
    assert (runs["env.real_weights"] == False).all()  # noqa: E712 - the records say the weights are random
    table = an.results_table(runs).set_index("run")
    assert set(table["weights"]) == {an.RANDOM_LABEL}
    assert table.loc["ci-fine-tuned", "baseline_run"] == "ci-zero-shot"
    assert pd.notna(table.loc["ci-fine-tuned", "improvement_pct"]) and table["size_gb"].notna().all()
    assert (ci_run / "train" / "adapter" / "adapter_config.json").is_file()
    # the analysis notebook shows the results table and the paired test, labelled
    analysis = json.dumps(nbformat.read(ci_run / "05_analysis.ipynb", as_version=4).cells)
    assert "against zero-shot" in analysis and an.RANDOM_LABEL in analysis and "McNemar p" in analysis


@pytest.mark.slow
def test_ci_resume_skips_finished_notebooks(ci_run):
    before = {n: (ci_run / n).stat().st_mtime_ns for n in mp.NOTEBOOKS}
    mp.run_pipeline("ci", [], run_dir=ci_run, resume=True, progress=False)
    assert {n: (ci_run / n).stat().st_mtime_ns for n in mp.NOTEBOOKS} == before


@pytest.mark.slow
def test_ci_run_builds_the_book(ci_run, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("notebooks", "_generated"))
    shutil.copytree(ROOT / "notebooks", root / "notebooks")  # the report notebooks the book executes
    html = book.build_book(run_dir=ci_run, root=root)
    page = (html / "book" / "notebooks" / "05_analysis.html").read_text()
    assert "random weights" in page and "<img" in page
    assert "ci-fine-tuned" in (html / "book" / "results.html").read_text()


# ---- failure, resume and validation with one-cell notebooks -------------------------------------------------

def _notebook(path: Path, source: str) -> None:
    params = new_code_cell('profile = "demo"\noverrides = []\nrun_dir = None\nresume = False')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(source)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


@pytest.fixture
def tiny_notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_ok.ipynb", "from pathlib import Path\nPath(run_dir, 'one.txt').write_text(profile)")
    _notebook(folder / "02_fails.ipynb", "x = 1\nraise ValueError('deliberate failure in cell two')")
    _notebook(folder / "03_never.ipynb", "from pathlib import Path\nPath(run_dir, 'three.txt').write_text('ran')")
    return folder


def test_failing_notebook_stops_the_pipeline_and_names_the_cell(tiny_notebooks, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(mp.NotebookError) as info:
        mp.run_pipeline("ci", ["lora.r=2"], run_dir=run_dir, notebooks=tiny_notebooks, progress=False)
    err = info.value
    assert err.notebook == "02_fails.ipynb" and err.ename == "ValueError"
    message = str(err)
    assert "02_fails.ipynb" in message and "raise ValueError('deliberate failure in cell two')" in message
    assert "ValueError: deliberate failure in cell two" in message
    assert (run_dir / "one.txt").read_text() == "ci"  # parameters reached the notebook
    assert not (run_dir / "three.txt").exists() and not (run_dir / "03_never.ipynb").exists()
    status = mp.read_status(run_dir)
    assert status["finished"] == ["01_ok.ipynb"] and status["overrides"] == ["lora.r=2"]
    assert status["failed"]["notebook"] == "02_fails.ipynb"
    assert _errors(nbformat.read(run_dir / "02_fails.ipynb", as_version=4))  # the failed copy is kept

    # fix the notebook, resume: 01 is skipped, 02 and 03 run
    (run_dir / "one.txt").unlink()
    _notebook(tiny_notebooks / "02_fails.ipynb", "x = 2")
    mp.run_pipeline("ci", ["lora.r=2"], run_dir=run_dir, notebooks=tiny_notebooks, resume=True, progress=False)
    assert not (run_dir / "one.txt").exists()
    assert (run_dir / "three.txt").read_text() == "ran"
    status = mp.read_status(run_dir)
    assert status["finished"] == ["01_ok.ipynb", "02_fails.ipynb", "03_never.ipynb"] and status["failed"] is None

    # resuming with other settings would mix two runs in one folder
    with pytest.raises(mp.PipelineError, match="another config"):
        mp.run_pipeline("ci", ["lora.r=8"], run_dir=run_dir, notebooks=tiny_notebooks, resume=True, progress=False)


def test_bad_override_fails_before_any_notebook(tiny_notebooks, tmp_path):
    with pytest.raises(ConfigError, match="lora.r"):
        mp.run_pipeline("ci", ["lora.r=0"], run_dir=tmp_path / "run", notebooks=tiny_notebooks, progress=False)
    with pytest.raises(ConfigError, match="unknown setting"):
        mp.run_pipeline("ci", ["lora.rank=4"], run_dir=tmp_path / "run", notebooks=tiny_notebooks, progress=False)
    assert not (tmp_path / "run").exists()


def test_status_file_is_replaced_atomically(tmp_path):
    mp._write_status(tmp_path, {"finished": ["a"]})
    mp._write_status(tmp_path, {"finished": ["a", "b"]})
    assert mp.read_status(tmp_path)["finished"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == [mp.STATUS_FILE]  # no temporary file left behind


def test_shipped_notebooks_have_parameters_cells():
    for name in mp.NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for parameter in ("profile", "overrides", "run_dir", "resume"):
            assert f"\n{parameter} = " in "\n" + tagged[0].source, (name, parameter)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed with outputs"
        assert nb.metadata["kernelspec"]["name"] == mp.KERNEL_NAME


def test_shipped_notebooks_are_thin():
    """Parameters, calls into medcore, display: no function definitions, no long cells."""
    for name in mp.NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
                assert "def " not in cell.source and "class " not in cell.source, (name, cell.source)
                assert len(cell.source.splitlines()) <= 20, (name, cell.source)


# ---- Ctrl-C -------------------------------------------------------------------------------------------------

def _papermill_cut_at(monkeypatch, cut: str | None) -> list[str]:
    """papermill replaced by a copy of each notebook (as papermill saves the cells run so far); Ctrl-C at `cut`."""
    import papermill

    calls = []

    def execute(path, output, **kwargs):
        calls.append(Path(path).name)
        nbformat.write(nbformat.read(path, as_version=4), output)
        if Path(path).name == cut:
            raise KeyboardInterrupt
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def test_ctrl_c_is_recorded_with_the_cut_notebook_and_resume_continues(tiny_notebooks, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    calls = _papermill_cut_at(monkeypatch, "02_fails.ipynb")
    with pytest.raises(KeyboardInterrupt, match=r"02_fails.ipynb was cut .*--resume runs it again"):
        mp.run_pipeline("ci", [], run_dir=run_dir, notebooks=tiny_notebooks, progress=False)
    status = mp.read_status(run_dir)
    assert calls == ["01_ok.ipynb", "02_fails.ipynb"] and status["finished"] == ["01_ok.ipynb"]
    assert status["failed"]["notebook"] == "02_fails.ipynb" and status["failed"]["interrupted"] is True
    cut = nbformat.read(run_dir / "02_fails.ipynb", as_version=4)
    assert cut.metadata["medcore"] == {"interrupted": True} and "Interrupted (Ctrl-C)" in cut.cells[0].source
    calls = _papermill_cut_at(monkeypatch, None)
    mp.run_pipeline("ci", [], run_dir=run_dir, notebooks=tiny_notebooks, resume=True, progress=False)
    status = mp.read_status(run_dir)
    assert calls == ["02_fails.ipynb", "03_never.ipynb"] and status["failed"] is None
    assert status["finished"] == ["01_ok.ipynb", "02_fails.ipynb", "03_never.ipynb"]


def test_ctrl_c_during_medcore_run_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from medcore.flows.cli import main as cli

    _papermill_cut_at(monkeypatch, "02_quantize.ipynb")
    assert cli(["run", "--profile", "ci", "--run-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == [f"[{i}/5] {name} -> {tmp_path / 'run' / name}" for i, name in enumerate(mp.NOTEBOOKS[:2], 1)]
    assert err[2:3] == [""] and err[3].startswith("medcore run: interrupted: 02_quantize.ipynb was cut")
    assert len(err) == 4
    assert mp.read_status(tmp_path / "run")["failed"]["interrupted"]


def test_notebook_kernels_talk_encrypted_and_print_no_tcp_warning(tmp_path, capfd):
    import papermill as pm
    from traitlets.config import Config

    from medcore.flows.pipeline import KERNEL_MANAGER_CONFIG, KERNEL_NAME

    nb = new_notebook(cells=[new_code_cell(
        "from ipykernel.kernelapp import IPKernelApp\nprint(IPKernelApp.instance().curve_secretkey is not None)")])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name=KERNEL_NAME,
                        progress_bar=False, log_output=False, config=Config(KERNEL_MANAGER_CONFIG))
    assert nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs[0]["text"] == "True\n"  # CurveZMQ on
    assert "without encryption" not in capfd.readouterr().err


# ---- notebook parameters through `medcore run -p NAME VALUE` --------------------------------------------------

def test_every_notebook_parameter_is_reachable_and_read_as_yaml():
    from medcore.flows.cli import build_parser

    paths = mp.notebook_paths(None, ROOT)
    known = mp.notebook_parameters(paths)
    assert {"presets", "cost_questions", "top_subjects"} <= set(known) and "profile" not in known
    args = build_parser().parse_args(["run", "-p", "presets", "[bf16, nf4+dq]", "-p", "cost_questions", "128",
                                      "--parameter", "with_bf16_base", "false"])
    params = mp.parse_parameters(args.parameter)
    assert params == {"presets": ["bf16", "nf4+dq"], "cost_questions": 128, "with_bf16_base": False}
    mp.check_parameters(params, paths)
    with pytest.raises(ConfigError, match="parameter 'cost_question': no notebook of this run takes it"):
        mp.check_parameters({"cost_question": 1}, paths)
    with pytest.raises(ConfigError, match="parameter 'overrides' is the run's own: give it as --set"):
        mp.check_parameters({"overrides": []}, paths)


def test_a_parameter_reaches_the_notebook_and_the_status(tiny_notebooks, tmp_path):
    nb = nbformat.read(tiny_notebooks / "01_ok.ipynb", as_version=4)
    nb.cells[0].source += "\nword = 'unset'"
    nb.cells[1].source = "from pathlib import Path\nPath(run_dir, 'one.txt').write_text(word)"
    nbformat.write(nb, tiny_notebooks / "01_ok.ipynb")
    run_dir = tmp_path / "run"
    mp.run_pipeline("ci", [], run_dir=run_dir, notebooks=[tiny_notebooks / "01_ok.ipynb"], progress=False,
                    parameters={"word": "given"})
    assert (run_dir / "one.txt").read_text() == "given" and mp.read_status(run_dir)["parameters"] == {"word": "given"}
