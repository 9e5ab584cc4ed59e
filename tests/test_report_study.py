"""The GPU study's report (medcore.report.study) on small study records made with the tiny random-weight model:
the headline models, every metric of the records, records scored with ties labelled, letter shares, tiers, paired
tests, seeds and ablations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcore.report import book as rp
from medcore.report import intro as ri
from medcore.report import study as rs
from medcore.records import load_predictions
from tests.study_records import scored_with_ties


def _metrics(root: Path, run: str) -> dict:
    return json.loads((root / "results" / "study" / run / "metrics.json").read_text())


def test_load_study_finds_the_headline_models_seeds_and_ablations(study_root):
    study = rs.load_study(study_root / "results" / "study")
    assert study.ok
    assert {k: v["run"] for k, v in study.models.items()} == {
        "tuned": "study-fine-tuned", "base": "study-nf4-dq-zero-shot", "bf16": "study-bf16-zero-shot"}
    assert study.seeds == ["study-fine-tuned", "study-seed1-fine-tuned"] and study.ablations == ["abl-r4-fine-tuned"]
    assert all(study.exact.values()) and study.robust("study-fine-tuned")
    empty = rs.load_study(study_root / "nothing")
    assert not empty.ok and "No study record" in rs.facts(empty)
    for frame in (rs.accuracy_long(empty), rs.letter_shares(empty), rs.subject_long(empty), rs.tier_table(empty),
                  rs.paired_frame(empty), rs.seed_table(empty), rs.ablation_frame(empty)):
        assert frame.empty
    assert rs.final_eval_loss(empty) is None and rs.majority(empty) is None


def test_accuracy_long_carries_every_metric_of_the_records(study_root):
    study = rs.load_study(study_root / "results" / "study")
    long = rs.accuracy_long(study).set_index(["run", "metric"])
    for run in ("study-bf16-zero-shot", "study-nf4-dq-zero-shot", "study-fine-tuned"):
        m = _metrics(study_root, run)
        for metric, col in rs.METRICS.items():
            assert long.loc[(run, metric), "accuracy"] == pytest.approx(m[col])
        assert long.loc[(run, "debiased"), "ci_high"] == pytest.approx(m["debiased_ci_high"])
    assert set(long["scoring"]) == {"exact"}
    shown = rs.accuracy_table(rs.accuracy_long(study))
    assert len(shown.columns) <= rp.WIDE and list(shown["record"])[-1] == "study-fine-tuned"
    m = _metrics(study_root, "study-fine-tuned")
    assert shown.iloc[-1]["permutation-debiased"] == rp.interval(m["debiased_accuracy"], m["debiased_ci_low"],
                                                                 m["debiased_ci_high"])


def test_records_without_exact_scoring_are_labelled_scored_with_ties(study_root, tmp_path):
    old = tmp_path / "old"
    scored_with_ties(study_root / "results" / "study", old / "results" / "study")
    study = rs.load_study(old / "results" / "study")
    long = rs.accuracy_long(study)
    assert set(long["metric"]) == {"standard"} and set(long["scoring"]) == {rs.TIES_LABEL}
    verdict = ri.verdict(old)
    assert rs.TIES_LABEL in verdict[0] and "exact ties" in verdict[1]
    assert rs.TIES_LABEL in ri.headline_caption(long, rs.majority(study))
    assert rs.TIES_LABEL in rs.prior_sentence(study)


def test_letter_shares_tiers_paired_tests_seeds_and_ablations(study_root):
    study = rs.load_study(study_root / "results" / "study")
    shares = rs.letter_shares(study)
    assert shares.groupby("model")["share"].sum().round(9).eq(1).all()
    answers = load_predictions(study_root / "results" / "study" / "study-fine-tuned")["answer"]
    key = shares[shares["kind"] == "answer key"].set_index("letter")["share"]
    assert key["A"] == pytest.approx((answers == 0).mean())
    tiers = rs.tier_table(study)
    assert set(tiers["question type (seed)"]) <= {*rs.SEED_TYPES.values(), rs.MISSING_TYPE}
    paired = rs.paired_table(rs.paired_frame(study))
    assert list(paired["measure"])[:3] == ["standard accuracy", "circular accuracy", "debiased accuracy"]
    spread = rs.seed_table(study).set_index("measure")
    values = [_metrics(study_root, r)["debiased_accuracy"] for r in ("study-fine-tuned", "study-seed1-fine-tuned")]
    assert spread.loc["debiased accuracy", "mean"] == rp.pct(sum(values) / 2)
    ablations = rs.ablation_frame(study)
    assert list(ablations["family"]) == ["main recipe", "rank"] and ablations["setting"].iloc[1] == "LoRA rank 4"
    assert rs.final_eval_loss(study) == {"loss": 1.45, "step": 4, "questions": 24, "record": "study-train"}
