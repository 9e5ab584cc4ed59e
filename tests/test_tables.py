"""Tables from run records (medcore.report.tables), on small synthetic records; the position-robust metrics are
tested in test_position_metrics.py, the report pages' own tables in test_report_study.py, test_intro.py and
test_perf.py."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from medcore import stats
from medcore.config import load_profile
from medcore.report import tables as an
from medcore.records import load_runs, write_run_record
from tests.synthetic_records import make_preds, make_record

ROOT = Path(__file__).resolve().parents[1]


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
    make_record(tmp_path, "ci-zero-shot", cfg, "zero-shot", make_preds(ids, base), cost=cost, footprint_bytes=2e9)
    make_record(tmp_path, "ci-bf16-zero-shot", cfg, "zero-shot", make_preds(ids, np.arange(40) < 12),
                precision="bf16", cost=cost, footprint_bytes=5e9)
    shuffled = make_preds(ids, tuned).sample(frac=1, random_state=1)  # another order: pairing must use the ids
    make_record(tmp_path, "ci-fine-tuned", cfg, "fine-tuned", shuffled, cost=cost, footprint_bytes=2.1e9)
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
    before = make_preds(ids, [1, 1, 0, 0, 1, 0, 0, 0])
    after = make_preds(ids, [1, 0, 1, 1, 1, 1, 0, 0]).iloc[::-1]  # reversed order
    after = pd.concat([after, make_preds(["extra"], [1])])  # a question only one model answered
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


def test_ablation_table_names_the_differing_settings(tmp_path):
    ids = [f"q{i}" for i in range(20)]
    for r, k in ((4, 6), (16, 9)):
        cfg = load_profile("ci", [f"lora.r={r}", f"name=ci-r{r}"])
        make_record(tmp_path, f"ci-r{r}-fine-tuned", cfg, "fine-tuned", make_preds(ids, np.arange(20) < k))
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
