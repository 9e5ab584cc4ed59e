"""The Performance page's product-path part reads the committed records: the bench record's medcore row is the
product's code path with its measured rate and targets, every gpu-check entry is listed and a failure is named."""
import json
from pathlib import Path

from medcore.pages_product import gpu_check_markdown, product_bench_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_product_bench_section_shows_the_record_it_reads():
    folder = ROOT / "results" / "bench-product"
    record = next(p for p in sorted(folder.iterdir()) if (p / "metrics.json").is_file())
    m = json.loads((record / "metrics.json").read_text())
    text = product_bench_markdown(folder)
    assert f"`{record.name}`" in text and "random weights" in text and "`medcore.train.train`" in text
    assert f"{m['training'][0]['real_tokens_per_s']:,.0f}" in text
    assert all(t["target"] in text for t in m["targets"])


def test_gpu_check_section_lists_every_entry_and_names_failures():
    folder = ROOT / "results" / "gpu-check"
    text = gpu_check_markdown(folder)
    entries = [e for p in folder.iterdir() if (p / "metrics.json").is_file()
               for e in json.loads((p / "metrics.json").read_text())["entries"]]
    assert entries and all(e["entry"] in text for e in entries)
    failed = [e["entry"] for e in entries if not e["passed"]]
    assert ("Failing: " in text) == bool(failed) and all(f"{name} (fail" in text for name in failed)


def test_missing_records_become_a_note(tmp_path):
    assert "No product-path benchmark record yet" in product_bench_markdown(tmp_path / "none")
    assert "No GPU check record yet" in gpu_check_markdown(tmp_path / "none")
