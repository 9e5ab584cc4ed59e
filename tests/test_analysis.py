"""Tables from run records (medcore.analysis) and the book's generated parts (medcore.pages and
medcore.pages_bench), on small synthetic records and on the committed GPU study and benchmark records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from medcore import analysis as an
from medcore import pages, pages_bench, results, stats
from medcore.study import ABLATIONS
from medcore.config import load_profile
from medcore.results import load_runs, write_run_record

ROOT = Path(__file__).resolve().parents[1]
STUDY, BENCH = ROOT / "results" / "study", ROOT / "results" / "bench"


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


def test_pages_from_synthetic_study_records(records, tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    text, glance = pages.study_markdown(records, out)
    assert "| model |" in glance
    assert "50.0% [" in glance and "+100.0 %" in glance
    assert "| ci-zero-shot | ci-fine-tuned | 40 | 4 | 14 |" in text  # the paired test
    assert (out / "study_accuracy.png").stat().st_size > 0 and (out / "study_tier.png").is_file()
    assert "Not run on the GPU" in text and "abl-dora" in text  # every ablation of the study driver is missing here
    empty, _ = pages.study_markdown(tmp_path / "none", out)
    assert "No study record" in empty
    assert "No benchmark record" in pages_bench.bench_markdown(tmp_path / "none", out)
    assert set(pages_bench.notes_substitutions(tmp_path / "none").values()) == {"no benchmark record yet"}


@pytest.mark.skipif(not (STUDY / "study-fine-tuned").is_dir(), reason="the GPU study records are not committed")
def test_study_page_shows_the_committed_records(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    text, glance = pages.study_markdown(STUDY, out)
    m = json.loads((STUDY / "study-fine-tuned" / "metrics.json").read_text())
    assert f"{m['accuracy']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}]" in glance
    for run in ("study-bf16-zero-shot", "study-nf4-dq-zero-shot", "study-fine-tuned", "study-kfold5"):
        assert run in glance
    before = pd.read_parquet(STUDY / "study-nf4-dq-zero-shot" / "predictions.parquet")
    after = pd.read_parquet(STUDY / "study-fine-tuned" / "predictions.parquet")
    paired = before.merge(after, on="id")
    p = stats.mcnemar_exact(paired["correct_x"], paired["correct_y"])["pvalue"]
    assert f"| study-nf4-dq-zero-shot | study-fine-tuned | {len(paired)} |" in text and f"{p:.2g}" in text
    for name in ("study_accuracy", "study_tier", "study_choice_type", "study_loss", "study_ablation", "study_cost"):
        assert (out / f"{name}.png").stat().st_size > 0, name
    ran = {p.name.removesuffix("-fine-tuned") for p in STUDY.glob("abl-*-fine-tuned")}
    for name in ABLATIONS:  # each ablation is in the table, or named as not run
        assert (f"{name}-fine-tuned" in text) == (name in ran) and (f"`{name}`" in text) == (name not in ran)
    assert ("lack of device time" in text) == (ran != set(ABLATIONS))
    shared = [p.parent.name for p in STUDY.glob("abl-*-fine-tuned/environment.json")
              if json.loads(p.read_text()).get("run_note")]
    assert all(run in text for run in shared) and (("shared (see note)" in text) == bool(shared))


@pytest.mark.skipif(not any(BENCH.glob("*/metrics.json")), reason="no committed benchmark record")
def test_performance_page_and_notes_come_from_the_bench_record(tmp_path):
    (out := tmp_path / "gen").mkdir()
    text = pages_bench.bench_markdown(BENCH, out)
    records = [json.loads((d / "metrics.json").read_text()) for d in results.run_dirs(BENCH)]
    m = records[-1]  # the page shows the record named last; the levers come from every record
    assert text.count(pages_bench.BENCH_LABEL) >= 5  # every table says random weights
    for row in m["scoring"]:  # both passes of both scorers, as recorded
        assert f"| {row['seconds']:.3g} |" in text or f"| {row['seconds']:.2f} |" in text
    for t in m["targets"]:  # every target shown; one not measured under its conditions here names its record
        line = next(x for x in text.splitlines() if x.startswith(f"| {t['target'].split(' (')[0]}"))
        assert ("this page's record" in line) == t["conditions_match"]
        assert (" met |" in line or "not met" in line) and "random weights" in line
    subs = pages_bench.notes_substitutions(BENCH)
    assert set(subs) == {f"measured_{k}" for k in pages_bench.NOTES_CELLS}
    assert subs["measured_train_ratio"].startswith(f"**{m['train_speedup_real_tokens']:.2f}x**")
    measured = {lever["lever"] for r in records for lever in r["levers"] if not lever.get("error")}
    for lever in ("attn", "compile", "optim", "ckpt", "repeat", "cudnn", "score_batch", "score_autocast", "score_cold"):
        assert (subs[f"measured_lever_{lever}"] == "not measured") == (lever not in measured)
    assert (subs["measured_profile_train"] == "not measured") == (not any("profile" in r for r in records))
    repeats = [lv["real_tokens_per_s"] for lv in m["levers"] if lv["lever"] == "repeat"]
    if repeats:  # the base row against the unchanged recipe re-timed: the page says which was cold
        base = {t["recipe"]: t for t in m["training"]}
        assert f"{sum(repeats) / len(repeats) / base['baseline']['real_tokens_per_s']:.2f}x" in text
        assert "against the repeats' mean" in subs["measured_lever_ckpt"]
    notes = (ROOT / "book" / "performance_notes.md").read_text()
    assert "pending" not in notes and all("{{ " + key + " }}" in notes for key in subs)
    shutil.rmtree(out)


def test_majority_letter_and_scored_exactly():
    m = an.majority_letter([0, 0, 1, 2, 3, 0, 2])
    assert (m["letter"], m["correct"], m["n"]) == ("A", 3, 7) and m["accuracy"] == pytest.approx(3 / 7)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(stats.wilson_interval(3, 7))
    assert an.majority_letter(["C", "C", "B"])["letter"] == "C"
    assert not an.scored_exactly(_preds(["a", "b"], [True, False]))
    assert an.scored_exactly(_preds(["a", "b"], [True, False]).assign(credit=1.0))


def _study_root(records, tmp_path, exact: bool) -> Path:
    """A project root whose results/study holds the ci records (answers keyed to C mostly), exact or not."""
    study = tmp_path / "root" / "results" / "study"
    shutil.copytree(records, study)
    for run in ("ci-zero-shot", "ci-fine-tuned", "ci-bf16-zero-shot"):
        preds = pd.read_parquet(study / run / "predictions.parquet")
        preds["answer"] = np.where(np.arange(len(preds)) % 4 == 0, 1, 2)  # C is the key's commonest letter
        if exact:
            preds["credit"] = preds["correct"].astype(float)
        preds.to_parquet(study / run / "predictions.parquet")
    return tmp_path / "root"


@pytest.mark.parametrize("exact", [False, True])
def test_verdict_from_synthetic_records(records, tmp_path, exact):
    root = _study_root(records, tmp_path, exact)
    (out := tmp_path / "gen").mkdir()
    text = pages.verdict_markdown(root, out)
    assert "**25.0%** [" in text and "**50.0%** [" in text  # ci-zero-shot 10/40, ci-fine-tuned 20/40
    assert "always answering **C**" in text and "**75.0%**" in text  # 30 of the 40 keyed C
    assert "the fine-tuned interval lies below it" in text
    assert ("predate exact scoring" in text) == (not exact)
    assert "GB" not in text  # no footprint record: no size sentence
    assert (out / "verdict_accuracy.png").stat().st_size > 0
    assert "No fine-tuned study record" in pages.verdict_markdown(tmp_path / "empty", out)


@pytest.mark.skipif(not (STUDY / "study-fine-tuned").is_dir(), reason="the GPU study records are not committed")
def test_verdict_numbers_equal_the_committed_records(tmp_path):
    (out := tmp_path / "gen").mkdir()
    text = pages.verdict_markdown(ROOT, out)
    metrics = {r: json.loads((STUDY / r / "metrics.json").read_text())
               for r in ("study-nf4-dq-zero-shot", "study-fine-tuned", "study-kfold5")}
    for m in metrics.values():
        assert f"**{m['accuracy']:.1%}** [{m['ci_low']:.1%}, {m['ci_high']:.1%}]" in text
    key = pd.read_parquet(STUDY / "study-fine-tuned" / "predictions.parquet")["answer"].value_counts()
    assert f"always answering **{'ABCD'[key.idxmax()]}**" in text and f"**{key.max() / key.sum():.1%}**" in text
    ties = [m["ties"] / m["n"] for m in metrics.values()]
    assert f"bf16 ties ({min(ties):.0%} to {max(ties):.0%} of answers" in text and "predate exact scoring" in text
    shares = [next(row["predicted_share"] for row in m["letters"] if row["letter"] == "A") for m in metrics.values()]
    key_a = (key.get(0, 0)) / key.sum()  # the A lean, from each record's letters table, against the key's share
    assert f"answer A {min(shares):.0%} to {max(shares):.0%} of the time against {key_a:.0%} in the key" in text
    fp_dir = next(d for d in (ROOT / "results" / "scale-h200", ROOT / "results" / "scale") if d.is_dir())
    fp = {f["precision"]: f for f in json.loads(next(fp_dir.glob("*-footprint/metrics.json")).read_text())["footprint"]}
    assert f"**{fp['nf4+dq']['total_bytes'] / 1e9:.2f} GB** instead of **{fp['bf16']['total_bytes'] / 1e9:.2f} GB**" in text
    assert (out / "verdict_accuracy.png").stat().st_size > 0


def test_seed_table_has_one_row_per_claim_and_reads_the_records(tmp_path):
    empty = pages.seed_table(tmp_path)
    assert list(empty["seed claim"]) == list(pages.SEED_CLAIMS)
    assert set(empty["measured here"]) == {"not measured (no record)"}
    table = pages.seed_table(ROOT).set_index("seed claim")
    assert list(table.index) == list(pages.SEED_CLAIMS) and len(table.columns) <= 7
    assert list(table["seed figure"]) == list(pages.SEED_CLAIMS.values())
    if not (STUDY / "study-fine-tuned").is_dir():
        return
    measured = table["measured here"]
    assert "not measured (no record)" not in set(measured)
    fp = {f["precision"]: f["total_bytes"] for f in json.loads(
        (ROOT / "results" / "scale-h200" / "scale-gemma-2b-random-footprint" / "metrics.json").read_text())["footprint"]}
    assert measured["model size"].startswith(f"{fp['bf16'] / 1e6:,.0f} MB \u2192 {fp['nf4+dq'] / 1e6:,.0f} MB")
    acc = {r: json.loads((STUDY / r / "metrics.json").read_text()) for r in ("study-nf4-dq-zero-shot", "study-fine-tuned")}
    assert measured["accuracy"].startswith(f"{acc['study-nf4-dq-zero-shot']['accuracy']:.1%} \u2192 "
                                           f"{acc['study-fine-tuned']['accuracy']:.1%}")
    history = json.loads((STUDY / "study-train" / "loss_history.json").read_text())
    assert measured["validation loss"] == f"{[h for h in history if 'eval_loss' in h][-1]['eval_loss']:.3f}"
    for tier, kind in pages.SEED_TYPES.items():
        after = next(t["accuracy"] for t in acc["study-fine-tuned"]["by_tier"] if t["tier"] == tier)
        assert f"{kind} = {tier}: " in measured["question types"] and f"\u2192 {after:.1%}" in measured["question types"]
    cost = {p: json.loads((ROOT / "results" / "scale-h200" / f"scale-gemma-2b-random-{p}-cost" / "metrics.json")
                          .read_text())["cost"]["latency_ms_median"] for p in ("bf16", "nf4-dq")}
    assert measured["inference latency"].startswith(f"{cost['bf16']:.1f} ms \u2192 {cost['nf4-dq']:.1f} ms")
    bench = json.loads(next((ROOT / "results" / "bench-product").glob("*/metrics.json")).read_text())
    medcore = next(t for t in bench["training"] if t["recipe"] == "medcore")
    assert f"{medcore['peak_memory_bytes'] / 1e9:.1f} GB at {medcore['token_budget']:,}" in measured["training memory"]
    for claim, records in table["records"].items():  # each measured cell names records that exist
        folder, *names = records.split(", ")
        parent = (ROOT / folder).parent
        assert (ROOT / folder).is_dir() and all((parent / n).is_dir() or (ROOT / n).is_dir() for n in names), claim
    text = pages.seed_markdown(ROOT)
    assert "| seed claim |" in text and "| records |" not in text and "Records read" in text


def test_reproduce_markdown_reads_the_recorded_times(tmp_path):
    assert "No timing record" in pages.reproduce_markdown(tmp_path)
    (tmp_path / "results" / "demo-cpu").mkdir(parents=True)
    (tmp_path / "results" / "demo-cpu" / "make_demo_time.txt").write_text("book built\nreal\t3m07.6s\nuser\t1m0s\n")
    assert "`make demo` took 3 min 8 s of wall time" in pages.reproduce_markdown(tmp_path)
