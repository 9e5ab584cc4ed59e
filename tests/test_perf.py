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
