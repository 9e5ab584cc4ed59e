"""The papermill pipeline: the ci profile end to end, resume, stopping at the first failing notebook, and the
tables rebuilt from run records.

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

from medcore import pipeline as mp
from medcore.config import ConfigError
from medcore.results import load_runs, write_run_record

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
        assert nb.metadata["papermill"]["exception"] is None or nb.metadata["papermill"]["exception"] is False
    runs = load_runs(ci_run / "results")
    stages = dict(zip(runs["run_id"], runs["stage"]))
    assert sorted(stages.values()) == ["data", "evaluate", "evaluate", "evaluate", "finetune", "quantize"]
    assert (runs["env.real_weights"] == False).all()  # noqa: E712 - the records say the weights are random
    table = mp.results_table(runs)
    assert set(table["weights"]) == {mp.RANDOM_LABEL}
    tuned = table.set_index("run").loc[mp.run_id(mp.load_profile("ci"), "fine-tuned")]
    assert tuned["baseline_run"] == mp.run_id(mp.load_profile("ci"), "zero-shot") and pd.notna(tuned["improvement_pct"])
    assert (ci_run / "train" / "adapter" / "adapter_config.json").is_file()
    # the analysis notebook shows the results table, labelled
    analysis = json.dumps(nbformat.read(ci_run / "05_analysis.ipynb", as_version=4).cells)
    assert "accuracy [95% CI]" in analysis and "random weights (accuracy meaningless)" in analysis


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
    (root / "notebooks").mkdir()
    html = mp.build_book(run_dir=ci_run, root=root)
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


# ---- tables from run records --------------------------------------------------------------------------------

def test_results_table_recomputes_improvement_and_labels_weights(tmp_path):
    common = {"stage": "evaluate", "n": 100, "precision": "nf4+dq", "footprint_bytes": 2e9,
              "peak_memory_bytes": 3e9, "latency_ms_median": 30.0}
    write_run_record(tmp_path, "real-base", {}, {**common, "role": "zero-shot", "accuracy": 0.40, "ci_low": 0.3,
                     "ci_high": 0.5, "model_source": "hub:google/gemma-2b"}, extra={"real_weights": True})
    write_run_record(tmp_path, "real-tuned", {}, {**common, "role": "fine-tuned", "accuracy": 0.50, "ci_low": 0.4,
                     "ci_high": 0.6, "model_source": "hub:google/gemma-2b", "baseline_run": "real-base",
                     "improvement_rel": 99.0}, extra={"real_weights": True})
    write_run_record(tmp_path, "rand-base", {}, {**common, "role": "zero-shot", "accuracy": 0.25, "ci_low": 0.2,
                     "ci_high": 0.3, "model_source": "random:gemma-2b"}, extra={"real_weights": False})
    write_run_record(tmp_path, "data", {}, {"stage": "data"})
    table = mp.results_table(load_runs(tmp_path)).set_index("run")
    assert list(table.index) == ["rand-base", "real-base", "real-tuned"]  # records without accuracy are left out
    assert table.loc["real-tuned", "improvement_pct"] == pytest.approx(25.0)  # from the accuracies, not the record
    assert table.loc["rand-base", "weights"] == mp.RANDOM_LABEL and table.loc["real-base", "weights"] == "real"
    assert table.loc["real-base", "size_gb"] == pytest.approx(2.0)
    shown = mp.format_results_table(table.reset_index())
    assert shown.loc[2, "accuracy [95% CI]"] == "50.0% [40.0%, 60.0%]" and shown.loc[2, "improvement"] == "+25.0 %"
    md = mp.results_markdown(tmp_path)
    assert md.count("\n|") >= 4 and mp.RANDOM_LABEL in md


def test_results_table_reads_workflows_records(tmp_path):
    """medcore.workflows writes roles zero-shot / fine-tuned, cost under `cost`, and names no baseline."""
    cfg = mp.load_profile("ci").to_dict()
    cost = {"latency_ms_median": 12.0, "peak_memory_bytes": 4e9}
    write_run_record(tmp_path, "ci-zero-shot", cfg, {"role": "zero-shot", "precision": "nf4+dq", "accuracy": 0.2,
                     "ci_low": 0.1, "ci_high": 0.3, "n": 48, "cost": cost, "real_weights": False})
    write_run_record(tmp_path, "ci-fine-tuned", cfg, {"role": "fine-tuned", "precision": "nf4+dq", "accuracy": 0.3,
                     "ci_low": 0.2, "ci_high": 0.4, "n": 48, "cost": cost, "real_weights": False})
    write_run_record(tmp_path, "ci-train", cfg, {"role": "train", "real_weights": False})
    runs = load_runs(tmp_path)
    table = mp.results_table(runs).set_index("run")
    assert table.loc["ci-fine-tuned", "baseline_run"] == "ci-zero-shot"
    assert table.loc["ci-fine-tuned", "improvement_pct"] == pytest.approx(50.0)
    assert table.loc["ci-zero-shot", "latency_ms"] == 12.0 and table.loc["ci-zero-shot", "peak_memory_gb"] == 4.0
    assert set(table["weights"]) == {mp.RANDOM_LABEL}
    assert dict(zip(mp.records_overview(runs)["run"], mp.records_overview(runs)["stage"]))["ci-train"] == "finetune"


def test_ablation_table_names_the_settings_that_differ(tmp_path):
    for r, acc in ((4, 0.3), (16, 0.35)):
        cfg = mp.load_profile("ci", [f"lora.r={r}"])
        write_run_record(tmp_path, f"tuned-r{r}", cfg.to_dict(), {"stage": "evaluate", "role": "fine-tuned",
                         "accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1, "n": 48,
                         "model_source": cfg.model.source})
    table = mp.ablation_table(load_runs(tmp_path))
    assert list(table["setting"]) == ["lora.r=16", "lora.r=4"] and set(table["ablation"]) == {"lora.r"}
    assert set(table["weights"]) == {mp.RANDOM_LABEL}


def test_run_ids_separate_settings_and_share_the_base():
    a, b = mp.load_profile("ci"), mp.load_profile("ci", ["lora.r=8"])
    assert mp.run_id(a, "zero-shot") == mp.run_id(b, "zero-shot")  # the base model does not depend on LoRA
    assert mp.run_id(a, "fine-tuned") != mp.run_id(b, "fine-tuned")
    assert mp.run_id(a, "fine-tuned").startswith("ci-fine-tuned-")


def test_precision_labels_round_trip():
    for label in ("bf16", "int8", "nf4", "nf4+dq", "fp4+dq"):
        q = mp.parse_precision_label(label)
        assert mp.precision_label(q.precision, q.double_quant) == label
    with pytest.raises(ValueError, match="nf8"):
        mp.parse_precision_label("nf8")


def test_prepare_data_drops_questions_that_cannot_fit(tmp_path):
    if not DEV_JSON.is_file():
        pytest.skip("MedMCQA data not found")
    from medcore.models import load_tokenizer

    cfg = mp.load_profile("ci", [f"data.source=local:{DEV_JSON}"])
    data = mp.prepare_data(cfg, load_tokenizer(cfg.model.source))
    assert len(data["train"]) == cfg.data.train_size and len(data["eval"]) == cfg.data.eval_limit
    assert not set(data["train"]["id"]) & set(data["eval"]["id"])
    overview = mp.split_overview(data).set_index("split")
    assert overview.loc["eval", "dropped (choices too long)"] == data["dropped"]["eval"] > 0  # byte-level tokenizer


def test_benchmark_markdown_shows_a_bench_record(tmp_path):
    assert "No benchmark record yet" in mp.benchmark_markdown(tmp_path / "bench")
    write_run_record(tmp_path / "bench", "bench-gemma-2b-gpu", {"name": "bench"},
                     {"model": "random:gemma-2b", "train": [{"recipe": "baseline", "tokens_per_s": 1900.5},
                                                            {"recipe": "medcore", "tokens_per_s": 10500.25}],
                      "scoring": {"batch_1_ms": {"nf4": 29.0}}, "peak_memory_gb": 9.0},
                     extra={"real_weights": False})
    md = mp.benchmark_markdown(tmp_path / "bench")
    assert "### bench-gemma-2b-gpu" in md and "| recipe | tokens_per_s |" in md and "1.05e+04" in md
    assert "**scoring**" in md and "| batch_1_ms.nf4 | 29 |" in md and mp.RANDOM_LABEL in md
