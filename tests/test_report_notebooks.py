"""The report notebooks (notebooks/00, 06, 07, 08) execute from small study records into pages without reprs,
stderr, tracebacks or paths, every glued value present."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_report_notebooks_execute_from_the_records_into_clean_pages(study_root, tmp_path):
    from medcore.flows.book import REPORTS, execute_reports

    shutil.copytree(ROOT / "notebooks", study_root / "notebooks", dirs_exist_ok=True)
    (study_root / "book").mkdir(exist_ok=True)
    (study_root / "runs" / "ci").mkdir(parents=True, exist_ok=True)
    written = execute_reports(study_root, study_root / "runs" / "ci", study_root / "book")
    assert [p.name for p in written] == [f"{page}.ipynb" for _, page in REPORTS]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        glued = set()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            tags = cell.metadata.get("tags", [])
            assert "remove-cell" in tags or "remove-input" in tags, (path.name, cell.source[:60])
            for out in cell.outputs:
                assert out.output_type != "error" and out.get("name") != "stderr", (path.name, out)
                text = json.dumps(out.get("data", {})) + out.get("text", "")
                assert "<IPython" not in text and str(study_root) not in text and "Traceback" not in text, path.name
                glued |= {out.get("metadata", {}).get("scrapbook", {}).get("name")} - {None}
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        keys = set(re.findall(r"\{glue:(?:md|text)\}`([^`]+)`", markdown)) | set(re.findall(r"\{glue:\w+\} (\S+)", markdown))
        assert keys <= glued, (path.name, keys - glued)
