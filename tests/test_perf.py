"""The Performance page's tables (medcore.report.perf) on small size records: the headline ratios and the
precision table."""
from __future__ import annotations

from medcore.report import book as rp
from medcore.report import perf


def test_headline_ratios_and_precision_table(study_root):
    ratios = perf.headline_ratios(study_root).set_index("quantity")
    assert ratios.loc["weights in memory", "ratio"] == "2.50x smaller"
    assert ratios.loc["scoring latency, batch 1", "ratio"] == "4.00x slower"
    assert len(ratios.columns) <= rp.WIDE - 1
    table = perf.precision_table(perf.precision_rows(study_root / "results" / "scale-h200")).set_index("precision")
    assert table.loc["NF4", "training peak"] == rp.MISSING and table.loc["NF4+DQ", "in memory"] == rp.gb(2e9)


def _paper_epoch_record(folder, run_id, entries):
    from medcore.config import RunConfig
    from medcore.records import write_run_record

    write_run_record(folder, run_id, RunConfig(), {"entries": entries, "real_weights": False},
                     extra={"real_weights": False, "kind": "gpu-check"})


def _train_entry(seconds, passed, last_epoch, resumed=False):
    return {"entry": "paper epoch: train" + (" (resumed)" if resumed else ""), "seconds": seconds, "passed": passed,
            "status": "pass" if passed else f"fail (timed out after {seconds} s)",
            "output_tail": [f"{{'loss': '1.38', 'epoch': '{e}'}}" for e in (0.4, last_epoch)]}


def test_paper_epoch_reading_sums_the_calls_and_says_how_far_the_epoch_got(tmp_path):
    assert "No paper-epoch record" in perf.paper_epoch_reading(tmp_path)
    _paper_epoch_record(tmp_path, "pe", [_train_entry(500, False, 0.5148)])
    _paper_epoch_record(tmp_path, "pe-resumed", [_train_entry(400, False, 0.991, resumed=True)])
    text = perf.paper_epoch_reading(tmp_path)
    assert "2 calls (`pe`, `pe-resumed`) took 900 s" in text and "99.1% of the way" in text
    assert "evaluation has not run" in text
    _paper_epoch_record(tmp_path, "pe-z", [_train_entry(100, True, 1.0, resumed=True),
                                           {"entry": "paper epoch: evaluate", "seconds": 60, "passed": True}])
    assert perf.paper_epoch_reading(tmp_path) == ("Training one epoch took 1,000 s of wall time over 3 calls "
                                                  "(`pe`, `pe-resumed`, `pe-z`), and evaluating it 60 s: "
                                                  "17.7 minutes in all.")
    whole = tmp_path / "whole"
    _paper_epoch_record(whole, "pe-whole", [{**_train_entry(870, True, 1.0), "wall_seconds": 726.0,
                                             "steady_real_tokens_per_s": 20900.7, "peak_memory_bytes": 7.76e9},
                                            {"entry": "paper epoch: evaluate", "seconds": 184, "passed": True}])
    text = perf.paper_epoch_reading(whole)
    assert text.startswith("Training one epoch took 870 s of wall time over 1 call (`pe-whole`), and evaluating "
                           "it 184 s: 17.6 minutes in all.")
    assert "loop itself ran 726 s at 20,901 real tokens/s steady, peak 7.8 GB" in text


def _bench_record(root, run_id, peers, headline=False, tokens_per_s=20000.0):
    from medcore.config import RunConfig
    from medcore.records import write_run_record

    metrics = {"headline": headline, "training": [{"recipe": "medcore", "real_tokens_per_s": tokens_per_s,
                                                   "peak_memory_bytes": 7.8e9, "token_budget": 16384}],
               "targets": [{"target": "training steady real tokens/s", "goal": ">= 25,000", "measured": tokens_per_s,
                            "unit": "", "met": tokens_per_s >= 25000},
                           {"target": "scoring 4,183 questions, first pass", "goal": "<= 3 s", "measured": 4.87,
                            "unit": "s", "met": False}],
               "peers": peers}
    write_run_record(root / "results" / "bench-product", run_id, RunConfig(), metrics)


def test_peer_and_target_tables_read_the_headline_record_and_every_peer_row(tmp_path):
    trl = {"peer": "trl", "code_path": "trl.SFTTrainer", "status": "ok", "real_tokens_per_s": 9000.0,
           "medcore_real_tokens_per_s": 21000.0, "ratio": 21000 / 9000, "peak_memory_bytes": 7.4e9}
    lm = {"peer": "lm_eval", "code_path": "lm_eval.simple_evaluate", "status": "ok", "scoring_wall_seconds": 14.7,
          "medcore_seconds": 4.9, "ratio": 3.0}
    broken = {"peer": "unsloth", "code_path": "unsloth", "status": "failed", "ratio": None,
              "error": "exit status 1\nTraceback\nRuntimeError: tokenizer too long"}
    slow = {"peer": "unsloth", "code_path": "unsloth", "status": "ok", "real_tokens_per_s": 30000.0,
            "medcore_real_tokens_per_s": 19000.0, "ratio": 19000 / 30000, "peak_memory_bytes": 5.8e9}
    _bench_record(tmp_path, "b-1-peers", [trl, lm, broken], headline=True, tokens_per_s=21000.0)
    _bench_record(tmp_path, "b-2-unsloth", [slow], tokens_per_s=19000.0)
    assert perf.product_bench(tmp_path)[0] == "b-1-peers"  # the marked record, though another is named later
    peers = perf.peer_table(tmp_path)
    assert list(peers["peer"]) == ["trl", "lm_eval", "unsloth", "unsloth"]
    assert list(peers["medcore / peer"]) == ["2.33x", "3.00x", rp.MISSING, "0.63x"]
    assert peers.loc[2, "status"] == "failed: exit status 1 ... RuntimeError: tokenizer too long"
    assert peers.loc[0, "peak memory (medcore / peer)"] == f"{rp.gb(7.8e9)} / {rp.gb(7.4e9)}"
    targets = perf.targets_table(tmp_path).set_index("target")
    assert targets.loc["training steady real tokens/s", ["measured", "met", "record"]].tolist() == [
        "21,000", "no", "b-1-peers"]
    assert targets.loc["scoring 4,183 questions, first pass", "measured"] == "4.87 s"
    assert targets.loc["medcore / trl, same run", "met"] == "yes"
    assert targets.loc["medcore / unsloth, same run", ["measured", "met", "record"]].tolist() == [
        "0.63x", "no", "b-2-unsloth"]
    assert "paper epoch + evaluation, wall time" not in targets.index
    _paper_epoch_record(tmp_path / "results" / "gpu-check", "pe-whole",
                        [_train_entry(870, True, 1.0), {"entry": "paper epoch: evaluate", "seconds": 184, "passed": True}])
    row = perf.targets_table(tmp_path).set_index("target").loc["paper epoch + evaluation, wall time"]
    assert row.tolist() == ["<= 15 min", "17.6 min", "no", "pe-whole"]


def test_scoring_history_lists_each_product_record_s_scoring_rows(tmp_path):
    from medcore.config import RunConfig
    from medcore.records import write_run_record

    row = {"scorer": "harness-style (4 requests/question)", "cold_seconds": 22.3, "seconds": 19.4,
           "questions_per_s": 215.0, "peak_memory_bytes": 30.47e9}
    write_run_record(tmp_path / "results" / "bench-product", "b", RunConfig(), {"scoring": [row]})
    table = perf.scoring_history(tmp_path)
    assert table.iloc[0][["record", "scorer", "first pass", "second pass", "questions/s", "peak memory"]].tolist() == [
        "b", row["scorer"], "22.30 s", "19.40 s", "215", rp.gb(30.47e9)]
    assert perf.scoring_history(tmp_path / "none").empty
