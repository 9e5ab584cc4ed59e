"""The book builds offline from executed notebooks without executing them, and a headless browser shows it.

A fake project (this repository's _config.yml, _toc.yml, book/ pages and the committed GPU study and benchmark
records under results/) and a fake pipeline run (five executed notebooks with a stored figure and table, two run
records of a random-weight model) are built with ``build_book``; Chromium then opens the index, the results, the
performance notes and the analysis page. The screenshots are kept under the pytest tmp dir, and copied to
``_build/screenshots/`` when the project has a ``_build`` folder.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from medcore.analysis import RANDOM_LABEL
from medcore.pages import SEED_CLAIMS
from medcore.pages_bench import BENCH_LABEL
from medcore.pipeline import NOTEBOOKS, _write_status, build_book, read_status
from medcore.results import write_run_record

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1800", "--virtual-time-budget=4000"]


def _png() -> str:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2.0, 1.5, 1.2])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fake_project(tmp: Path, finished: list[str], records: bool = True) -> tuple[Path, Path, Path]:
    """A project copy with book sources (and, with ``records``, the committed results/study and results/bench),
    and a run folder whose notebooks in `finished` were 'executed'."""
    root = tmp / "project"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("notebooks", "_generated"))
    if records:
        for part in ("study", "bench", "bench-h200-other", "bench-cpu", "scale", "scale-h200", "scaleout",
                     "bench-product", "demo-cpu"):
            if (ROOT / "results" / part).is_dir():
                shutil.copytree(ROOT / "results" / part, root / "results" / part)
    (root / "notebooks").mkdir()
    run = root / "runs" / "ci"
    run.mkdir(parents=True)
    marker = tmp / "executed-by-the-book"
    table = pd.DataFrame({"run": ["ci-zero-shot", "ci-fine-tuned"], "accuracy": [0.25, 0.3]}).to_html()
    png = _png()
    for name in finished:
        nb = new_notebook(cells=[
            new_markdown_cell(f"# {name.removesuffix('.ipynb')}"),
            # if the book ever executed a notebook, this cell would leave a file behind
            new_code_cell(f"open({str(marker)!r}, 'w').write('executed')\nfigure_and_table()", execution_count=1,
                          outputs=[new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                                   new_output("execute_result", data={"text/html": table, "text/plain": "table"},
                                              execution_count=1)]),
        ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(nb, run / name)
    config = {"name": "ci", "model": {"source": "random:tiny-gemma"}}
    common = {"precision": "nf4+dq", "n": 48, "footprint_bytes": 2_000_000, "real_weights": False,
              "cost": {"latency_ms_median": 4.0, "best_qps": 100.0, "peak_memory_bytes": 600_000_000}}
    for run_id, role, acc, low, high in (("ci-zero-shot", "zero-shot", 0.25, 0.15, 0.39),
                                         ("ci-fine-tuned", "fine-tuned", 0.3, 0.19, 0.44)):
        write_run_record(run / "results", run_id, config, {**common, "role": role, "accuracy": acc, "ci_low": low,
                                                           "ci_high": high}, extra={"real_weights": False})
    _write_status(run, {"profile": "ci", "overrides": ["train.max_steps=4"], "notebooks": list(NOTEBOOKS),
                        "finished": finished, "seconds": {n: 1.0 for n in finished}, "failed": None})
    return root, run, marker


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    root, run, marker = _fake_project(tmp, list(NOTEBOOKS))
    html = build_book(run_dir=run, root=root)
    return html, root, run, marker, tmp


def test_config_builds_offline_without_execution():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [f["file"] for part in toc["parts"] for c in part["chapters"] for f in [c, *c.get("sections", [])]]
    assert [f"book/notebooks/{n.removesuffix('.ipynb')}" for n in NOTEBOOKS] == [f for f in files if "notebooks" in f]
    for page in ("methods", "results", "performance", "performance_notes", "reproducibility", "references"):
        assert f"book/{page}" in files and (ROOT / "book" / f"{page}.md").is_file()
    bib = (ROOT / "book" / "references.bib").read_text()
    for key in ("pal2022medmcqa", "dettmers2023qlora", "hu2021lora", "gemmateam2024gemma", "gao2024harness"):
        assert key in bib


def test_prose_pages_state_no_numbers_of_their_own():
    """Measured figures come from run records (generated includes) or notebooks, never from the prose."""
    for page in ("intro", "methods", "results", "performance", "reproducibility"):
        text = (ROOT / "book" / f"{page}.md").read_text()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks and directives
        prose = re.sub(r"\{cite:p\}`[^`]*`|`[^`]*`", "", prose)
        names = r"Gemma-\d+[BM]?|Gemma-3-270M|Gemma 3|4-bit|8-bit|bf16|fp16|fp4|int8|nf4|NF4|FP4|01\.\.05|MedMCQA"
        leftover = re.findall(r"\d+(?:[.,]\d+)?\s*(?:%|GB|MB|ms|s\b|x\b)?", re.sub(names, "", prose))
        assert not leftover, f"book/{page}.md states numbers in prose: {leftover}"


def test_build_copies_executed_notebooks_and_never_executes(built_book):
    html, root, run, marker, _ = built_book
    assert (html / "index.html").is_file()
    for name in NOTEBOOKS:
        assert (root / "book" / "notebooks" / name).read_bytes() == (run / name).read_bytes()
        assert (html / "book" / "notebooks" / name.replace(".ipynb", ".html")).is_file()
    assert not marker.exists(), "the book executed a notebook"
    generated = root / "book" / "_generated"
    results = (generated / "results.md").read_text()
    assert "ci-fine-tuned" in results and RANDOM_LABEL in results and "+20.0 %" in results
    assert (generated / "accuracy.png").stat().st_size > 0
    assert "study-fine-tuned" in (generated / "study.md").read_text()
    assert BENCH_LABEL in (generated / "performance.md").read_text()
    assert "always answering" in (generated / "verdict.md").read_text()
    assert (generated / "verdict_accuracy.png").stat().st_size > 0
    assert all(claim in (generated / "seed_versus_measured.md").read_text() for claim in SEED_CLAIMS)
    assert "`make demo` took" in (generated / "reproduce.md").read_text()
    reproduce = (generated / "run.md").read_text()
    assert "python -m medcore run --profile ci --set train.max_steps=4" in reproduce
    refs = (html / "book" / "references.html").read_text().lower()
    assert "medmcqa" in refs and "qlora" in refs and "low-rank adaptation" in refs
    notes = (html / "book" / "performance_notes.html").read_text()
    assert "{{" not in notes and "not measured" in notes and "bench-gemma-2b" in notes


def test_missing_notebook_and_records_become_notes(tmp_path):
    root, run, _ = _fake_project(tmp_path, list(NOTEBOOKS[:2]), records=False)
    status = read_status(run)
    _write_status(run, {**status, "failed": {"notebook": NOTEBOOKS[2], "ename": "ValueError", "evalue": "boom"}})
    html = build_book(run_dir=run, root=root, out=tmp_path / "site")
    assert html == tmp_path / "site" / "html"
    page = (html / "book" / "notebooks" / "04_evaluate.html").read_text()
    assert "Not executed" in page and "ValueError" in page
    assert "No benchmark record yet" in (html / "book" / "performance.html").read_text()
    assert "No study record" in (html / "book" / "results.html").read_text()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("headless Chromium is needed for the browser test: apt-get install -y chromium")
    return exe


def _browse(page: Path, shot: Path, profile: Path) -> str:
    exe = _chromium()
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return dom.stdout


def _images(dom: str, page_dir: Path) -> list[Path]:
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', dom)
    assert srcs and all(srcs), f"no img with a src in the page: {srcs}"
    return [(page_dir / unquote(s)).resolve() for s in srcs if not s.startswith(("data:", "http"))]


def test_browser_shows_results_tables_and_figures(built_book):
    html, _, _, _, tmp = built_book
    shots = tmp / "screenshots"
    shots.mkdir(exist_ok=True)
    profile = tmp / "chromium-profile"
    index_dom = _browse(html / "index.html", shots / "index.png", profile)
    # index.html redirects to the intro page: the question and the verdict with its figure come before any table
    assert "At a glance" in index_dom
    question, verdict = index_dom.find("The question."), index_dom.find("always answering")
    first_table, figure = index_dom.find("<table"), index_dom.find("verdict_accuracy.png")
    assert 0 <= question < verdict < first_table and 0 <= figure < first_table
    assert re.search(r'class="[^"]*\btip\b[^"]*"[^>]*>\s*<p class="admonition-title">Reproduce', index_dom)
    seed = next(t for t in re.findall(r"<table.*?</table>", index_dom, flags=re.S) if "seed claim" in t)
    assert all(f"<td><p>{claim}</p></td>" in seed or f"<td>{claim}</td>" in seed for claim in SEED_CLAIMS)
    assert "not measured" not in seed
    # the study's before/after table and the run's results table
    tables = re.findall(r"<table.*?</table>", index_dom, flags=re.S)
    assert any("accuracy" in t and "study-fine-tuned" in t and "study-kfold5" in t for t in tables)
    assert any("accuracy" in t and "ci-fine-tuned" in t and "random weights" in t for t in tables)
    for img in _images(index_dom, html / "book"):
        assert img.is_file() and img.stat().st_size > 0, img

    results_dom = _browse(html / "book" / "results.html", shots / "results.png", profile)
    assert "McNemar exact p" in results_dom and "abl-dora-fine-tuned" in results_dom
    images = _images(results_dom, html / "book")
    assert len(images) >= 7 and all(i.is_file() and i.stat().st_size > 0 for i in images)

    perf_dom = _browse(html / "book" / "performance.html", shots / "performance.png", profile)
    if (ROOT / "results" / "scaleout").is_dir():  # the two-GPU records: runs, throughput, accuracy tables
        assert "scaleout-gemma-2b-ddp2" in perf_dom and "scaling efficiency" in perf_dom
    if (ROOT / "results" / "scale-h200").is_dir():
        assert "NF4+DQ" in perf_dom and "Random weights" in perf_dom
    for part in ("bench-h200-other", "bench-cpu"):  # the other benchmark records, a row each
        for record in (ROOT / "results" / part).glob("*/metrics.json"):
            assert record.parent.name in perf_dom
    assert all(i.is_file() and i.stat().st_size > 0 for i in _images(perf_dom, html / "book"))

    notes_dom = _browse(html / "book" / "performance_notes.html", shots / "performance_notes.png", profile)
    # every measured cell filled from the records: the headline's ratio cell says whether its target is met
    assert "{{" not in notes_dom and re.search(r"target (&gt;|>)= 3x (not )?met", notes_dom)

    page = html / "book" / "notebooks" / "05_analysis.html"
    analysis_dom = _browse(page, shots / "analysis.png", profile)
    assert "<table" in analysis_dom
    for img in _images(analysis_dom, page.parent):
        assert img.is_file() and img.stat().st_size > 0, img
    for shot in ("index.png", "results.png", "performance_notes.png", "analysis.png"):
        data = (shots / shot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if (ROOT / "_build").is_dir():
        keep = ROOT / "_build" / "screenshots"
        keep.mkdir(exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, keep / f"test_book-{shot.name}")
