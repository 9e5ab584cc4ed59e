"""Tables from run records (medcore.report.records), on small synthetic records; the report pages' own tables are
tested in test_report.py."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from medcore import stats
from medcore.config import load_profile
from medcore.report import records as an
from medcore.results import load_runs, write_run_record

ROOT = Path(__file__).resolve().parents[1]


def _preds(ids, correct, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    answer = rng.integers(0, 4, len(ids))
    pred = np.where(correct, answer, (answer + 1) % 4)
    return pd.DataFrame({"id": ids, "subject": "Anatomy", "tier": "pre-clinical", "choice_type": "single",
                         "answer": answer, "pred": pred, "correct": np.asarray(correct, bool),
                         "prob": rng.uniform(0.25, 1, len(ids))})


def _record(folder, run_id, cfg, role, preds, precision="nf4+dq", real=False, **metrics):
    k, n = int(preds["correct"].sum()), len(preds)
    low, high = stats.wilson_interval(k, n)
    by_tier = [{"index": 0, "tier": "pre-clinical", "n": n, "correct": k, "accuracy": k / n, "ci_low": low,
                "ci_high": high}]
    m = {"role": role, "precision": precision, "n": n, "correct": k, "accuracy": k / n, "ci_low": low,
         "ci_high": high, "by_tier": by_tier, "real_weights": real, **metrics}
    return write_run_record(folder, run_id, cfg.to_dict(), m, predictions=preds, extra={"real_weights": real})


@pytest.fixture
def records(tmp_path):
    """ci-style records: bf16 and nf4+dq zero-shot, nf4+dq fine-tuned, a train record; predictions shuffled."""
    cfg = load_profile("ci")
    ids = [f"q{i}" for i in range(40)]
    base = np.arange(40) < 10          # 10 / 40 right
    tuned = (np.arange(40) < 6) | ((np.arange(40) >= 20) & (np.arange(40) < 34))  # 6 shared + 14 new = 20 / 40
    cost = {"latency_ms_median": 12.0, "latency_ms_p90": 15.0, "best_qps": 80.0, "best_batch_size": 16,
            "peak_memory_bytes": 4e9, "peak_memory_kind": "process_peak_rss",
            "throughput": [{"batch_size": 1, "qps": 20.0}, {"batch_size": 16, "qps": 80.0}],
            "conditions": {"device_name": "cpu"}}
    _record(tmp_path, "ci-zero-shot", cfg, "zero-shot", _preds(ids, base), cost=cost, footprint_bytes=2e9)
    _record(tmp_path, "ci-bf16-zero-shot", cfg, "zero-shot", _preds(ids, np.arange(40) < 12), precision="bf16",
            cost=cost, footprint_bytes=5e9)
    shuffled = _preds(ids, tuned).sample(frac=1, random_state=1)  # another order: pairing must use the ids
    _record(tmp_path, "ci-fine-tuned", cfg, "fine-tuned", shuffled, cost=cost, footprint_bytes=2.1e9)
    write_run_record(tmp_path, "ci-train", cfg.to_dict(), {"role": "train", "precision": "nf4+dq", "n_train": 48,
                     "global_step": 4, "train_loss": 1.5, "examples_per_s": 2.0, "wall_seconds": 30.0,
                     "peak_memory_bytes": 3e9, "parameters": {"trainable": 1000}, "real_weights": False},
                     loss_history=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.8, "eval_loss": 1.9}],
                     extra={"real_weights": False})
    write_run_record(tmp_path, "ci-data", cfg.to_dict(), {"role": "data"})
    return tmp_path


def test_results_table_recomputes_improvement_against_the_same_precision(records):
    table = an.results_table(load_runs(records)).set_index("run")
    assert sorted(table.index) == ["ci-bf16-zero-shot", "ci-fine-tuned", "ci-zero-shot"]  # no data/train rows
    tuned = table.loc["ci-fine-tuned"]
    assert tuned["baseline_run"] == "ci-zero-shot"  # nf4+dq, not the bf16 zero-shot
    assert tuned["improvement_pct"] == pytest.approx((0.5 - 0.25) / 0.25 * 100)
    assert tuned["size_gb"] == pytest.approx(2.1) and tuned["latency_ms"] == 12.0 and tuned["peak_memory_gb"] == 4.0
    assert set(table["weights"]) == {an.RANDOM_LABEL}
    assert pd.isna(table.loc["ci-zero-shot", "improvement_pct"])
    shown = an.format_results_table(table.reset_index()).set_index("run")
    assert shown.loc["ci-fine-tuned", "accuracy [95% CI]"].startswith("50.0% [")
    assert shown.loc["ci-fine-tuned", "improvement"] == "+100.0 %"


def test_paired_test_matches_questions_by_id():
    ids = [f"q{i}" for i in range(8)]
    before = _preds(ids, [1, 1, 0, 0, 1, 0, 0, 0])
    after = _preds(ids, [1, 0, 1, 1, 1, 1, 0, 0]).iloc[::-1]  # reversed order
    after = pd.concat([after, _preds(["extra"], [1])])  # a question only one model answered
    test = an.paired_test(before, after)
    assert (test["n"], test["unmatched"], test["b"], test["c"]) == (8, 1, 1, 3)
    assert test["pvalue"] == pytest.approx(stats.mcnemar_exact([1, 1, 0, 0, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1, 0, 0])["pvalue"])
    assert test["difference"] == pytest.approx(2 / 8)
    assert test["difference_ci_low"] <= test["difference"] <= test["difference_ci_high"]
    with pytest.raises(ValueError, match="repeat"):
        an.paired_test(pd.concat([before, before]), after)


def test_paired_tests_read_the_records_predictions(records):
    table = an.results_table(load_runs(records))
    tests = an.paired_tests(table, records)
    assert len(tests) == 1
    row = tests.iloc[0]
    assert (row["before"], row["after"], row["n"], row["b"], row["c"]) == ("ci-zero-shot", "ci-fine-tuned", 40, 4, 14)
    shown = an.format_paired_tests(tests)
    assert shown.loc[0, "difference [95% CI]"].startswith("+25.0% [")


def _rotated(ids, correct, circular, debiased, pred):
    """A predictions frame with the rotation columns metric_tests reads."""
    df = pd.DataFrame({"id": ids, "answer": 0, "pred": pred, "correct": np.asarray(correct, bool)})
    return df.assign(circular_correct=np.asarray(circular, bool), debiased_correct=np.asarray(debiased, bool))


def test_metric_tests_pair_every_metric_by_question():
    ids = [f"q{i}" for i in range(6)]
    before = _rotated(ids, [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 2])
    before["answer"] = [0, 0, 0, 1, 1, 2]
    before["correct"] = before["pred"] == before["answer"]  # all right; 3 keyed A
    after = before.assign(pred=[0, 1, 1, 1, 0, 2], circular_correct=[1, 1, 0, 0, 0, 0],
                          debiased_correct=[1, 1, 1, 1, 0, 0]).iloc[::-1]
    after["correct"] = after["pred"] == after["answer"]
    t = an.metric_tests(before, after).set_index("metric")
    assert list(t.index) == ["standard", "circular", "debiased", *[f"{k}_{c}" for c in "ABCD"
                                                                   for k in ("recall", "predicted")]]
    assert tuple(t.loc["standard", ["n", "b", "c"]]) == (6, 3, 0) and t.loc["standard", "after"] == 0.5
    assert tuple(t.loc["circular", ["b", "c", "before", "after"]]) == (0, 2, 0.0, 2 / 6)
    assert tuple(t.loc["debiased", ["b", "c"]]) == (0, 3)
    assert tuple(t.loc["recall_A", ["n", "b", "c", "after"]]) == (3, 2, 0, 1 / 3)  # only the questions keyed A
    assert tuple(t.loc["recall_B", ["n", "b", "c"]]) == (2, 1, 0) and t.loc["recall_D", "n"] == 0
    assert tuple(t.loc["predicted_B", ["b", "c", "before", "after"]]) == (1, 2, 2 / 6, 3 / 6)
    assert t.loc["debiased", "pvalue"] == pytest.approx(stats.mcnemar_exact([0, 0, 0], [1, 1, 1])["pvalue"])
    plain = an.metric_tests(before.drop(columns=["circular_correct"]), after)
    assert "circular" not in set(plain["metric"]) and "debiased" in set(plain["metric"])


def test_position_table_and_seed_spread_read_the_records(tmp_path):
    cfg = load_profile("ci")
    ids = [f"q{i}" for i in range(20)]
    for seed, (acc, circ) in enumerate([(10, 4), (12, 5), (14, 3)]):
        run = cfg.__class__.from_dict(cfg.to_dict())
        run.train.seed = seed
        _record(tmp_path, f"ci-seed{seed}-fine-tuned", run, "fine-tuned", _preds(ids, np.arange(20) < acc),
                circular_accuracy=circ / 20, debiased_accuracy=0.3, predicted_share_A=0.5 + seed / 10)
    _record(tmp_path, "ci-zero-shot", cfg, "zero-shot", _preds(ids, np.arange(20) < 5))
    runs = load_runs(tmp_path)
    table = an.position_table(runs).set_index("run")
    assert table.loc["ci-seed1-fine-tuned", "circular_accuracy"] == 0.25
    assert np.isnan(table.loc["ci-zero-shot", "circular_accuracy"])  # scored without rotations: said, not hidden
    spread = an.seed_spread(runs).set_index("metric")
    assert spread.loc["accuracy", "seeds"] == "0, 1, 2" and spread.loc["accuracy", "recipe"] == "ci-seed0-fine-tuned"
    assert spread.loc["accuracy", "mean"] == pytest.approx(0.6) and spread.loc["accuracy", "sd"] == pytest.approx(0.1)
    assert (spread.loc["circular_accuracy", "min"], spread.loc["circular_accuracy", "max"]) == (0.15, 0.25)
    assert spread.loc["predicted_share_A", "mean"] == pytest.approx(0.6)
    assert len(an.seed_spread(runs[runs["run_id"] != "ci-seed1-fine-tuned"])) == 4  # two seeds still a spread
    assert an.seed_spread(runs[runs["run_id"].isin(["ci-seed0-fine-tuned", "ci-zero-shot"])]).empty


def test_ablation_table_names_the_differing_settings(tmp_path):
    ids = [f"q{i}" for i in range(20)]
    for r, k in ((4, 6), (16, 9)):
        cfg = load_profile("ci", [f"lora.r={r}", f"name=ci-r{r}"])
        _record(tmp_path, f"ci-r{r}-fine-tuned", cfg, "fine-tuned", _preds(ids, np.arange(20) < k))
        write_run_record(tmp_path, f"ci-r{r}-train", cfg.to_dict(), {"role": "train", "wall_seconds": 10.0 * r,
                         "examples_per_s": 1.0, "peak_memory_bytes": 1e9})
    table = an.ablation_table(load_runs(tmp_path)).set_index("run")
    assert list(table["setting"]) == ["lora.r=16", "lora.r=4"] and set(table["ablation"]) == {"lora.r"}
    assert table.loc["ci-r4-fine-tuned", "train_seconds"] == 40.0
    assert table.loc["ci-r16-fine-tuned", "accuracy"] == pytest.approx(0.45)


def test_breakdown_cost_train_and_loss_tables(records):
    runs = load_runs(records)
    long = an.breakdown(runs, "tier", {"ci-zero-shot": "before", "ci-fine-tuned": "after"})
    assert list(long["model"]) == ["before", "after"] and list(long["tier"]) == ["pre-clinical"] * 2
    assert long["accuracy"].tolist() == [0.25, 0.5]
    cost = an.cost_table(runs).set_index("run")
    assert cost.loc["ci-zero-shot", "qps_batch_1"] == 20.0 and cost.loc["ci-zero-shot", "peak_memory_mb"] == 4000
    trains = an.train_table(runs)
    assert trains["run"].tolist() == ["ci-train"] and trains.loc[0, "peak memory (GB)"] == 3.0
    loss = an.loss_long(records, "ci-train")
    assert sorted(zip(loss["split"], loss["step"])) == [("eval", 2), ("train", 1), ("train", 2)]
    overview = an.records_overview(runs)
    assert set(overview["role"]) == {"zero-shot", "fine-tuned", "train", "data"}


def test_footprint_tables_from_a_record():
    run = {"metrics": {"footprint": [
        {"precision": "bf16", "embedding_bytes": 100, "attention_bytes": 50, "mlp_bytes": 50, "norm_bytes": 1,
         "other_bytes": 0, "quant_constant_bytes": 0, "buffer_bytes": 2, "total_bytes": 203},
        {"precision": "nf4+dq", "embedding_bytes": 100, "attention_bytes": 13, "mlp_bytes": 13, "norm_bytes": 1,
         "other_bytes": 0, "quant_constant_bytes": 3, "buffer_bytes": 2, "total_bytes": 132},
        {"precision": "int8", "status": "failed: RuntimeError: no backend"}]}}
    summary, long = an.footprint_tables(run)
    assert summary.set_index("precision").loc["nf4+dq", "size_vs_bf16"] == pytest.approx(132 / 203)
    assert long.groupby("precision")["bytes"].sum().to_dict() == {"bf16": 203, "nf4+dq": 132}
    assert "quant constants" in set(long["kind"])


def test_majority_letter_and_scored_exactly():
    m = an.majority_letter([0, 0, 1, 2, 3, 0, 2])
    assert (m["letter"], m["correct"], m["n"]) == ("A", 3, 7) and m["accuracy"] == pytest.approx(3 / 7)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(stats.wilson_interval(3, 7))
    assert an.majority_letter(["C", "C", "B"])["letter"] == "C"
    assert not an.scored_exactly(_preds(["a", "b"], [True, False]))
    assert an.scored_exactly(_preds(["a", "b"], [True, False]).assign(credit=1.0))
