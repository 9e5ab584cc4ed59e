"""The report modules (medcore.report.study, intro, perf) on small records made in the test with the
tiny random-weight model: their DataFrames and sentences carry the records' numbers, label records scored with
ties, and the report notebooks execute from records into pages without reprs, stderr, tracebacks or paths."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nbformat
import pandas as pd
import pytest

from medcore.report import book as rp
from medcore.report import intro as ri
from medcore.report import perf
from medcore.report import plots_report as pr
from medcore.report import records as an
from medcore.report import study as rs
from medcore.results import load_predictions
from tests.study_records import make_scale, make_study, scored_with_ties

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory, dev_ds) -> Path:
    root = tmp_path_factory.mktemp("project")
    make_study(root / "results" / "study", dev_ds)
    make_scale(root / "results" / "scale-h200")
    return root


def _metrics(root: Path, run: str) -> dict:
    return json.loads((root / "results" / "study" / run / "metrics.json").read_text())


def test_load_study_finds_the_headline_models_seeds_and_ablations(root):
    study = rs.load_study(root / "results" / "study")
    assert study.ok
    assert {k: v["run"] for k, v in study.models.items()} == {
        "tuned": "study-fine-tuned", "base": "study-nf4-dq-zero-shot", "bf16": "study-bf16-zero-shot"}
    assert study.seeds == ["study-fine-tuned", "study-seed1-fine-tuned"] and study.ablations == ["abl-r4-fine-tuned"]
    assert all(study.exact.values()) and study.robust("study-fine-tuned")
    empty = rs.load_study(root / "nothing")
    assert not empty.ok and "No study record" in rs.facts(empty)
    for frame in (rs.accuracy_long(empty), rs.letter_shares(empty), rs.subject_long(empty), rs.tier_table(empty),
                  rs.paired_frame(empty), rs.seed_table(empty), rs.ablation_frame(empty)):
        assert frame.empty
    assert rs.final_eval_loss(empty) is None and rs.majority(empty) is None


def test_accuracy_long_carries_every_metric_of_the_records(root):
    study = rs.load_study(root / "results" / "study")
    long = rs.accuracy_long(study).set_index(["run", "metric"])
    for run in ("study-bf16-zero-shot", "study-nf4-dq-zero-shot", "study-fine-tuned"):
        m = _metrics(root, run)
        for metric, col in rs.METRICS.items():
            assert long.loc[(run, metric), "accuracy"] == pytest.approx(m[col])
        assert long.loc[(run, "debiased"), "ci_high"] == pytest.approx(m["debiased_ci_high"])
    assert set(long["scoring"]) == {"exact"}
    shown = rs.accuracy_table(rs.accuracy_long(study))
    assert len(shown.columns) <= rp.WIDE and list(shown["record"])[-1] == "study-fine-tuned"
    m = _metrics(root, "study-fine-tuned")
    assert shown.iloc[-1]["permutation-debiased"] == rp.interval(m["debiased_accuracy"], m["debiased_ci_low"],
                                                                 m["debiased_ci_high"])


def test_verdict_uses_the_position_robust_metrics_and_the_records_numbers(root):
    verdict = ri.verdict(root)
    assert len(verdict) == 3
    base, tuned = _metrics(root, "study-nf4-dq-zero-shot"), _metrics(root, "study-fine-tuned")
    assert f"**{rp.pct(base['debiased_accuracy'])}** to **{rp.pct(tuned['debiased_accuracy'])}**" in verdict[0]
    assert "permutation-debiased" in verdict[0] and rs.TIES_LABEL not in verdict[0]
    assert "over seeds 0, 1" in verdict[0]
    answers = load_predictions(root / "results" / "study" / "study-fine-tuned")["answer"]
    always = an.majority_letter(answers)
    assert f"Always answering {always['letter']}" in verdict[1] and rp.pct(always["accuracy"]) in verdict[1]
    assert f"{rp.gb(5e9)} to **{rp.gb(2e9)}** (2.5x" in verdict[2]
    assert rp.ms(40.0) in verdict[2] and rp.ms(10.0) in verdict[2]  # NF4+DQ against bf16 at batch 1


def test_records_without_exact_scoring_are_labelled_scored_with_ties(root, tmp_path):
    old = tmp_path / "old"
    scored_with_ties(root / "results" / "study", old / "results" / "study")
    study = rs.load_study(old / "results" / "study")
    long = rs.accuracy_long(study)
    assert set(long["metric"]) == {"standard"} and set(long["scoring"]) == {rs.TIES_LABEL}
    verdict = ri.verdict(old)
    assert rs.TIES_LABEL in verdict[0] and "exact ties" in verdict[1]
    assert rs.TIES_LABEL in ri.headline_caption(long, rs.majority(study))
    assert rs.TIES_LABEL in rs.prior_sentence(study)


def test_letter_shares_tiers_paired_tests_seeds_and_ablations(root):
    study = rs.load_study(root / "results" / "study")
    shares = rs.letter_shares(study)
    assert shares.groupby("model")["share"].sum().round(9).eq(1).all()
    answers = load_predictions(root / "results" / "study" / "study-fine-tuned")["answer"]
    key = shares[shares["kind"] == "answer key"].set_index("letter")["share"]
    assert key["A"] == pytest.approx((answers == 0).mean())
    tiers = rs.tier_table(study)
    assert set(tiers["question type (seed)"]) <= {*rs.SEED_TYPES.values(), rs.MISSING_TYPE}
    paired = rs.paired_table(rs.paired_frame(study))
    assert list(paired["measure"])[:3] == ["standard accuracy", "circular accuracy", "debiased accuracy"]
    spread = rs.seed_table(study).set_index("measure")
    values = [_metrics(root, r)["debiased_accuracy"] for r in ("study-fine-tuned", "study-seed1-fine-tuned")]
    assert spread.loc["debiased accuracy", "mean"] == rp.pct(sum(values) / 2)
    ablations = rs.ablation_frame(study)
    assert list(ablations["family"]) == ["main recipe", "rank"] and ablations["setting"].iloc[1] == "LoRA rank 4"
    assert rs.final_eval_loss(study) == {"loss": 1.45, "step": 4, "questions": 24, "record": "study-train"}


def test_seed_table_has_every_claim_beside_a_measured_figure(root, tmp_path):
    empty = ri.seed_table(tmp_path)
    assert list(empty["seed claim"]) == list(ri.SEED_CLAIMS) and set(empty["measured here"]) == {ri.NOT_MEASURED}
    table = ri.seed_table(root).set_index("seed claim")
    assert list(table["seed figure"]) == list(ri.SEED_CLAIMS.values())
    assert ri.NOT_MEASURED not in set(table["measured here"])
    assert table.loc["model size", "measured here"].startswith(f"{rp.mb(5e9)} \u2192 {rp.mb(2e9)}")
    assert table.loc["validation loss", "measured here"] == "1.450"
    assert table.loc["inference latency", "measured here"].startswith(f"{rp.ms(10.0)} \u2192 {rp.ms(40.0)}")
    # training peak less what an earlier run still held: bf16 held nothing, NF4+DQ 3 GB
    assert table.loc["training memory", "measured here"] == f"{rp.gb(7.08e9, 1)} \u2192 {rp.gb(4.08e9, 1)}"
    for records in table["records"]:
        for name in records.split(", "):
            path = root / name if "/" in name else root / "results" / "study" / name
            assert path.is_dir() or list(path.parent.glob(path.name)), name


def test_headline_ratios_and_precision_table(root):
    ratios = perf.headline_ratios(root).set_index("quantity")
    assert ratios.loc["weights in memory", "ratio"] == "2.50x smaller"
    assert ratios.loc["scoring latency, batch 1", "ratio"] == "4.00x slower"
    assert len(ratios.columns) <= rp.WIDE - 1
    table = perf.precision_table(perf.precision_rows(root / "results" / "scale-h200")).set_index("precision")
    assert table.loc["NF4", "training peak"] == rp.MISSING and table.loc["NF4+DQ", "in memory"] == rp.gb(2e9)


def test_figures_draw_the_reference_lines(root):
    long, always = ri.headline_frame(root)
    fig = pr.headline_accuracy(long, prior=(always["letter"], always["accuracy"]))
    main = fig.axes[-1]  # circular accuracy has its own panel on the left
    xs = {round(line.get_xdata()[0], 6) for line in main.lines if len(set(line.get_xdata())) == 1}
    assert {0.25, round(always["accuracy"], 6)} <= xs and len(fig.axes) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(f"always {always['letter']}" in t for t in labels) and "permutation-debiased" in labels
    assert fig.get_figwidth() <= 7.5
    shares = rs.letter_shares(rs.load_study(root / "results" / "study"))
    bars = pr.letter_prior(shares).axes[0].patches
    assert len([b for b in bars if b.get_height() > 0]) <= 4 * shares["model"].nunique()


def test_table_html_has_no_index_and_scrolls_when_wide():
    df = pd.DataFrame({f"c{i}": [1.0, float("nan")] for i in range(9)})
    html = rp.table(df)._repr_html_()
    assert "medcore-wide" in html and "nan" not in html and rp.MISSING in html and "<th></th>" not in html
    assert "medcore-wide" not in rp.table(df.iloc[:, :3])._repr_html_()
    assert repr(rp.Markdown("4,183 questions")) == repr("4,183 questions")  # glue:text reads it back unchanged


@pytest.mark.slow
def test_report_notebooks_execute_from_the_records_into_clean_pages(root, tmp_path):
    from medcore.flows.book import REPORTS, execute_reports

    shutil.copytree(ROOT / "notebooks", root / "notebooks", dirs_exist_ok=True)
    (root / "book").mkdir(exist_ok=True)
    (root / "runs" / "ci").mkdir(parents=True, exist_ok=True)
    written = execute_reports(root, root / "runs" / "ci", root / "book")
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
                assert "<IPython" not in text and str(root) not in text and "Traceback" not in text, path.name
                glued |= {out.get("metadata", {}).get("scrapbook", {}).get("name")} - {None}
        markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        keys = set(re.findall(r"\{glue:(?:md|text)\}`([^`]+)`", markdown)) | set(re.findall(r"\{glue:\w+\} (\S+)", markdown))
        assert keys <= glued, (path.name, keys - glued)


def test_reproduce_times_read_the_recorded_times(root, tmp_path):
    assert ri.reproduce_times(tmp_path) == {"demo": "", "study": ""}
    (tmp_path / "results" / "demo-cpu").mkdir(parents=True)
    (tmp_path / "results" / "demo-cpu" / "make_demo_time.txt").write_text("book built\nreal\t3m47.6s\nuser\t1m0s\n")
    assert ri.reproduce_times(tmp_path)["demo"] == "about 4 min"
    seconds = sum(json.loads(p.read_text()).get(key, 0) for key in ("wall_seconds", "score_seconds")
                  for p in (root / "results" / "study").glob("*/metrics.json")
                  if key == "score_seconds" or p.parent.name.endswith("-train"))
    assert ri.reproduce_times(root)["study"].startswith(f"about {round(seconds / 60)} min on one cpu")
