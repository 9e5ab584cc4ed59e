"""The book's intro (medcore.report.intro) on small study records: the verdict carries the records' numbers and the
position-robust metrics, the seed-claims table a measured figure beside each claim, the reproduction times."""
from __future__ import annotations

import json
from pathlib import Path

from medcore.report import book as rp
from medcore.report import intro as ri
from medcore.report import position_metrics as pos
from medcore.report import study as rs
from medcore.records import load_predictions


def _metrics(root: Path, run: str) -> dict:
    return json.loads((root / "results" / "study" / run / "metrics.json").read_text())


def test_verdict_uses_the_position_robust_metrics_and_the_records_numbers(study_root):
    verdict = ri.verdict(study_root)
    assert len(verdict) == 3
    base, tuned = _metrics(study_root, "study-nf4-dq-zero-shot"), _metrics(study_root, "study-fine-tuned")
    assert f"**{rp.pct(base['debiased_accuracy'])}** to **{rp.pct(tuned['debiased_accuracy'])}**" in verdict[0]
    assert "permutation-debiased" in verdict[0] and rs.TIES_LABEL not in verdict[0]
    assert "over seeds 0, 1" in verdict[0]
    answers = load_predictions(study_root / "results" / "study" / "study-fine-tuned")["answer"]
    always = pos.majority_letter(answers)
    assert f"Always answering {always['letter']}" in verdict[1] and rp.pct(always["accuracy"]) in verdict[1]
    assert f"{rp.gb(5e9)} to **{rp.gb(2e9)}** (2.5x" in verdict[2]
    assert rp.ms(40.0) in verdict[2] and rp.ms(10.0) in verdict[2]  # NF4+DQ against bf16 at batch 1


def test_seed_table_has_every_claim_beside_a_measured_figure(study_root, tmp_path):
    empty = ri.seed_table(tmp_path)
    assert list(empty["seed claim"]) == list(ri.SEED_CLAIMS) and set(empty["measured here"]) == {ri.NOT_MEASURED}
    table = ri.seed_table(study_root).set_index("seed claim")
    assert list(table["seed figure"]) == list(ri.SEED_CLAIMS.values())
    assert ri.NOT_MEASURED not in set(table["measured here"])
    assert table.loc["model size", "measured here"].startswith(f"{rp.mb(5e9)} \u2192 {rp.mb(2e9)}")
    assert table.loc["validation loss", "measured here"] == "1.450"
    assert table.loc["inference latency", "measured here"].startswith(f"{rp.ms(10.0)} \u2192 {rp.ms(40.0)}")
    # training peak less what an earlier run still held: bf16 held nothing, NF4+DQ 3 GB
    assert table.loc["training memory", "measured here"] == f"{rp.gb(7.08e9, 1)} \u2192 {rp.gb(4.08e9, 1)}"
    for records in table["records"]:
        for name in records.split(", "):
            path = study_root / name if "/" in name else study_root / "results" / "study" / name
            assert path.is_dir() or list(path.parent.glob(path.name)), name


def test_reproduce_times_read_the_recorded_times(study_root, tmp_path):
    assert ri.reproduce_times(tmp_path) == {"demo": "", "study": ""}
    (tmp_path / "results" / "demo-cpu").mkdir(parents=True)
    (tmp_path / "results" / "demo-cpu" / "make_demo_time.txt").write_text("book built\nreal\t3m47.6s\nuser\t1m0s\n")
    assert ri.reproduce_times(tmp_path)["demo"] == "about 4 min"
    seconds = sum(json.loads(p.read_text()).get(key, 0) for key in ("wall_seconds", "score_seconds")
                  for p in (study_root / "results" / "study").glob("*/metrics.json")
                  if key == "score_seconds" or p.parent.name.endswith("-train"))
    assert ri.reproduce_times(study_root)["study"].startswith(f"about {round(seconds / 60)} min on one cpu")
