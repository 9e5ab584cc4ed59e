"""The book's GPU scale table (random-weight Gemma-2B shape per precision) and scale-out section
(medcore.pages_perf), on small synthetic records and on the committed records under results/scale-h200 and
results/scaleout."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from medcore import pages_bench, pages_perf
from medcore.results import write_run_record

ROOT = Path(__file__).resolve().parents[1]
SCALE_H200, SCALEOUT = ROOT / "results" / "scale-h200", ROOT / "results" / "scaleout"
PREFIX = "scale-gemma-2b-random"
ENV = {"real_weights": False, "device": "NVIDIA H200", "run_note": "beside another job"}
GB = 10**9


def _scale_records(folder: Path, skip_train: str | None = None) -> None:
    cfg = {"model": {"source": "random:gemma-2b"}, "lora": {"r": 16},
           "train": {"token_budget": 4096, "max_batch_size": 128, "gradient_checkpointing": True}}
    footprint = [{"precision": p, "status": "ok", "embedding_bytes": 1 * GB, "attention_bytes": 0, "mlp_bytes": 0,
                  "quant_constant_bytes": 0, "total_bytes": total, "disk_bytes": total + 1000}
                 for p, total in (("bf16", 5 * GB), ("int8", 3 * GB), ("nf4", 2.2 * GB), ("nf4+dq", 2.1 * GB))]
    write_run_record(folder, f"{PREFIX}-footprint", cfg, {"role": "footprint", "footprint": footprint}, extra=ENV)
    for i, p in enumerate(("bf16", "int8", "nf4", "nf4+dq")):
        name = f"{PREFIX}-{p.replace('+', '-')}"
        cost = {"latency_ms_median": 10.0 + i, "latency_ms_p90": 12.0, "latency_n": 50,
                "throughput": [{"batch_size": 1, "qps": 20.0}, {"batch_size": 64, "qps": 900.0 + i}],
                "best_batch_size": 64, "best_qps": 900.0 + i, "peak_memory_bytes": 6 * GB,
                "conditions": {"device_name": "NVIDIA H200", "n_questions": 1024, "mean_prompt_tokens": 57.0}}
        write_run_record(folder, f"{name}-cost", cfg, {"role": "cost", "precision": p, "cost": cost}, extra=ENV)
        if p == skip_train:
            continue
        footprint_bytes = footprint[i]["total_bytes"]
        resident = footprint_bytes + 80_000_000 + i * 1.1 * GB  # adapter (20 M fp32) plus what was not released
        write_run_record(folder, f"{name}-train", cfg, {
            "role": "train", "precision": p, "real_tokens_per_s": 7000.0, "steady_real_tokens_per_s": 7500.0 + i,
            "examples_per_s": 130.0, "peak_memory_bytes": resident + 2 * GB, "resident_memory_bytes": resident,
            "global_step": 30, "optimizer": "paged_adamw_8bit", "parameters": {"trainable": 20_000_000}}, extra=ENV)


def test_scale_table_computes_memory_columns_and_says_random(tmp_path):
    _scale_records(tmp_path / "scale-h200", skip_train="nf4")
    (out := tmp_path / "gen").mkdir()
    text = pages_perf.scale_gpu_markdown(tmp_path / "scale-h200", out)
    assert "Random weights" in text and "no accuracy" in text
    table = text.split("### Model size")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # in memory, on disk, steady tokens/s, peak, peak above resident, held beyond the model (resident - footprint)
    assert rows["int8"].startswith("| int8 | 3.00 | 3.00 | 7,501 | 6.18 | 2.00 | 1.18 | 901 (batch 64) | 11.0 |")
    assert rows["NF4+DQ"].startswith("| NF4+DQ | 2.10 | 2.10 | 7,503 | 7.48 | 2.00 | 3.38 | 903 (batch 64) |")
    assert rows["NF4"].startswith("| NF4 | 2.20 | 2.20 | — | — | — | — | 902 (batch 64) |")  # no training record
    # the caveat: the excess beyond model plus adapter, computed, in run order
    assert "exceeded the model plus adapter by about 0.0 GB (bf16), 1.1 GB (int8), 3.3 GB (NF4+DQ)" in text
    assert "20.0 M trainable parameters in fp32, 0.08 GB" in text
    assert "NVIDIA H200" in text and "token budget 4096" in text and "at most 128 rows" in text
    assert "gradient checkpointing on" in text and "30 optimizer steps (paged_adamw_8bit)" in text
    assert "1024 questions" in text and "beside another job" in text
    assert (out / "scale_gpu.png").stat().st_size > 0
    assert "### Model size" in text  # the footprint detail of the same records
    assert "No GPU scale record" in pages_perf.scale_gpu_markdown(tmp_path / "none", out)


def _scaleout_records(folder: Path) -> None:
    runs = [{"name": "so-single", "role": "single", "gpus": 1, "status": "ok", "exit": 0, "seconds": 70.0},
            {"name": "so-ddp2", "role": "ddp", "gpus": 2, "status": "ok", "exit": 0, "seconds": 60.0},
            {"name": "so-fsdp2", "role": "fsdp", "gpus": 2, "status": "failed", "exit": 1, "seconds": 40.0},
            {"name": "so-real-ddp2", "role": "accuracy-train", "gpus": 2, "status": "ok", "exit": 0, "seconds": 140.0}]
    row = {"steps": 40, "optimizer": "adamw_torch", "examples_per_s": 80.0, "real_weights": False}
    training = {"single": {**row, "run": "so-single", "gpus": 1, "real_tokens_per_s": 5000.0,
                           "steady_real_tokens_per_s": 6000.0, "peak_memory_gb_per_gpu": [4.25],
                           "resident_memory_gb_per_gpu": [2.15]},
                "ddp": {**row, "run": "so-ddp2", "gpus": 2, "real_tokens_per_s": 9000.0,
                        "steady_real_tokens_per_s": 10800.0, "peak_memory_gb_per_gpu": [4.31, 4.32],
                        "resident_memory_gb_per_gpu": [2.2, 2.2]}}
    summary = {"runs": runs, "training": training, "speedup_real_tokens_per_s": 1.8,
               "scaling_efficiency_real_tokens_per_s": 0.9, "speedup_steady_real_tokens_per_s": 1.8,
               "scaling_efficiency_steady_real_tokens_per_s": 0.9,
               "accuracy": {"accuracy": 0.32, "ci_low": 0.30, "ci_high": 0.34, "n": 4183,
                            "reference_run": "results/study/study-fine-tuned", "reference_accuracy": 0.31,
                            "reference_ci": [0.29, 0.33], "inside_reference_interval": True,
                            "mcnemar": {"b": 40, "c": 52, "n": 4183, "pvalue": 0.25}}}
    write_run_record(folder, "scaleout-summary", {"gpus": 2, "parts": "throughput,fsdp,accuracy", "model":
                     "random:gemma-2b", "token_budget": 4096, "run_limit": 240.0}, summary,
                     extra={"real_weights": "mixed", "device": "NVIDIA H200", "gpu_count": 2})
    (folder / "logs").mkdir()
    (folder / "logs" / "so-fsdp2.log").write_text("Traceback\n[rank0]: ValueError: Cannot flatten integer dtype "
                                                  "tensors\nChildFailedError: boom\n")


def test_scaleout_section_shows_efficiency_failed_run_and_accuracy(tmp_path):
    _scaleout_records(tmp_path / "results" / "scaleout")
    (out := tmp_path / "gen").mkdir()
    text = pages_perf.scaleout_markdown(tmp_path / "results" / "scaleout", out, fsdp_dir=tmp_path / "results" / "none")
    assert "| so-fsdp2 | fsdp | 2 | **failed** (exit 1): `ValueError: Cannot flatten integer dtype tensors` | 40 |" in text
    assert "`results/scaleout/logs/so-fsdp2.log`" in text
    assert "| steady (first steps left out) | 6,000 | 10,800 | 1.80x | 90.0% |" in text
    assert text.count(pages_bench.BENCH_LABEL) >= 2 and "Random weights" in text
    assert "4.31 / 4.32" in text and "2.20 / 2.20" in text
    assert "32.0% [30.0%, 34.0%]" in text and "31.0% [29.0%, 33.0%]" in text
    assert "| yes | 40 | 52 | 0.25 |" in text
    assert "FSDP + QLoRA: not measured" in text and "ended **failed** (exit 1)" in text
    assert (out / "scaleout_throughput.png").stat().st_size > 0
    missing = pages_perf.scaleout_markdown(tmp_path / "nothing", out)
    assert "No scale-out record" in missing and "python -m medcore scaleout" in missing


def test_scaleout_section_shows_an_fsdp_summary_when_there_is_one(tmp_path):
    _scaleout_records(tmp_path / "results" / "scaleout")
    fsdp = {"steps": 40, "optimizer": "adamw_torch", "run": "so-fsdp2", "gpus": 2, "real_tokens_per_s": 8000.0,
            "steady_real_tokens_per_s": 8500.0, "peak_memory_gb_per_gpu": [3.1, 3.2],
            "resident_memory_gb_per_gpu": [1.17, 1.18]}
    write_run_record(tmp_path / "results" / "scaleout-fsdp", "scaleout-summary", {"gpus": 2}, {
        "runs": [{"name": "so-fsdp2", "role": "fsdp", "gpus": 2, "status": "ok", "exit": 0, "seconds": 50.0}],
        "training": {"fsdp": fsdp}}, extra={"real_weights": False})
    (out := tmp_path / "gen").mkdir()
    text = pages_perf.scaleout_markdown(tmp_path / "results" / "scaleout", out, tmp_path / "results" / "scaleout-fsdp")
    assert "not measured" not in text.split("### FSDP + QLoRA")[1]
    assert "| FSDP + QLoRA | so-fsdp2-train | 2 | 40 | adamw_torch | 8,000 | 8,500 | 3.10 / 3.20 | 1.17 / 1.18 |" in text


@pytest.mark.skipif(not (SCALE_H200.is_dir() and SCALEOUT.is_dir()), reason="GPU scale records not committed")
def test_committed_scale_and_scaleout_records_render(tmp_path):
    (out := tmp_path / "gen").mkdir()
    scale = pages_perf.scale_gpu_markdown(SCALE_H200, out)
    scaleout = pages_perf.scaleout_markdown(SCALEOUT, out, fsdp_dir=ROOT / "results" / "scaleout-fsdp")
    for text in (scale, scaleout):
        assert "NVIDIA H200" in text and "Random weights" in text
    for label in ("| bf16 |", "| int8 |", "| NF4 |", "| NF4+DQ |"):
        assert label in scale
    assert "model plus adapter by about" in scale and "—" not in scale.split("### Model size")[0]
    assert "**failed**" in scaleout and "scaling efficiency" in scaleout and "McNemar" in scaleout


def test_other_bench_records_get_one_row_each_with_their_ratios(tmp_path):
    def rec(run_id, med, base, one, harness, real):
        metrics = {"model": "embedded:gemma-3-270m", "device": "cpu", "real_weights": real,
                   "conditions": {"precision": "nf4", "double_quant": True, "device_type": "cpu", "torch_threads": 2},
                   "training": [{"recipe": "medcore", "real_tokens_per_s": med, "peak_memory_bytes": 3e9},
                                {"recipe": "baseline", "real_tokens_per_s": base, "peak_memory_bytes": 6e9}],
                   "scoring": [{"scorer": "medcore one-pass", "questions_per_s": one, "questions": 64},
                               {"scorer": "harness-style (4 requests)", "questions_per_s": harness, "questions": 64}]}
        write_run_record(tmp_path, run_id, {}, metrics, extra={"real_weights": real})
    rec("bench-a-cpu", 600.0, 200.0, 30.0, 10.0, True)
    rec("bench-b-cpu", 500.0, 250.0, 20.0, 8.0, True)
    text = pages_bench.bench_summary_markdown(tmp_path)
    assert "| bench-a-cpu |" in text and "| 3.00x |" in text and "| 2.00x |" in text and "| 2.50x |" in text
    assert "cpu (2 threads)" in text and "| real |" in text and "nf4 + DQ" in text
    assert "Training levers" not in text  # these records have no levers
    assert pages_bench.bench_summary_markdown(tmp_path / "missing") == ""


def _bench_record(folder, run_id, model, precision, base_rate, levers, complete=True):
    metrics = {"model": model, "device": "NVIDIA H200", "real_weights": False, "complete": complete,
               "conditions": {"precision": precision, "double_quant": precision == "nf4", "device_type": "cuda",
                              "token_budget": 16384, "gradient_checkpointing": True, "lora_inputs_bf16": True,
                              "warm_all_shapes": True},
               "training": [{"recipe": "medcore", "real_tokens_per_s": base_rate, "examples_per_s": 1.0,
                             "peak_memory_bytes": 10e9, "mfu": 0.3},
                            {"recipe": "baseline", "real_tokens_per_s": 1000.0, "examples_per_s": 1.0,
                             "peak_memory_bytes": 18e9, "mfu": 0.02}],
               "scoring": [], "levers": [{"examples_per_s": 1.0, "mfu": 0.3, "error": None, **lv} for lv in levers]}
    write_run_record(folder, run_id, {}, metrics, extra={"real_weights": False})


def test_other_records_show_their_levers_and_fill_only_the_notes_cells_the_headline_left(tmp_path):
    """Records of other models and precisions: their levers get a table under the summary, a stopped record
    says so, and in the notes each of their levers is listed (with record, shape and precision) in a cell the
    headline's folder did not fill; the headline's own cells and repeats are not touched."""
    bench, other = tmp_path / "bench", tmp_path / "other"
    peft = {"lever": "peft_cast", "variant": "peft's float32 copy kept"}
    budget = {"lever": "budget", "variant": "4096", "token_budget": 4096, "peak_memory_bytes": 4e9}
    _bench_record(bench, "bench-x", "random:gemma-2b", "nf4", 20000.0,
                  [{"lever": "compile", "variant": "compiled", "real_tokens_per_s": 26000.0, "peak_memory_bytes": 11e9},
                   {**budget, "real_tokens_per_s": 8000.0}])
    _bench_record(bench, "bench-y", "random:gemma-2b", "nf4", 30000.0,
                  [{**budget, "real_tokens_per_s": 12000.0, "compile": True}])
    _bench_record(other, "bench-b16", "random:gemma-2b", "bf16", 24000.0,
                  [{**peft, "real_tokens_per_s": 19800.0, "peak_memory_bytes": 13e9},
                   {"lever": "repeat", "variant": "again", "real_tokens_per_s": 24000.0, "peak_memory_bytes": 10e9},
                   {"lever": "compile", "variant": "compiled", "real_tokens_per_s": 99000.0, "peak_memory_bytes": 9e9}])
    _bench_record(other, "bench-small", "random:gemma-3-270m", "nf4", 30000.0,
                  [{**peft, "real_tokens_per_s": 30000.0, "peak_memory_bytes": 10e9}], complete=False)
    subs = pages_bench.notes_substitutions(bench, more=[other])
    cell = subs["measured_lever_peft_cast"]
    assert cell.count("real tokens/s") == 2 and "**-18% real tokens/s** against the base row (24,000)" in cell
    assert "+3.00 GB" in cell and "-18% against the repeats' mean" in cell and "bf16)" in cell
    assert "`bench-small`, random weights, `random:gemma-3-270m` shape, nf4" in cell and "**+0% real" in cell
    assert subs["measured_lever_compile"].startswith("**+30% real tokens/s**") and "bench-b16" not in \
        subs["measured_lever_compile"]  # the headline folder's cell stays its own
    assert "bench-b16" not in subs["measured_lever_repeat"]
    assert pages_bench.notes_substitutions(bench)["measured_lever_peft_cast"] == "not measured"
    # a token-budget cell lists every record's row at that budget, with the row's setting
    assert subs["measured_lever_budget_4096"] == (
        "**-60% real tokens/s** against the base row, peak 4.00 GB (-6.00 GB); checkpointing on, LoRA inputs bf16 "
        "(`bench-x`, random weights (Gemma-2B shape)); **-60% real tokens/s** against the base row, peak 4.00 GB "
        "(-6.00 GB); checkpointing on, compiled layers, LoRA inputs bf16 (`bench-y`, random weights (Gemma-2B shape))")
    text = pages_bench.bench_summary_markdown(other)
    assert "### Training levers (random weights)" in text and "| bench-b16 |" in text.split("Training levers")[1]
    assert "bench-small (stopped in its levers: `complete: false`)" in text
    assert "LoRA inputs bf16" in text


def test_scaleout_accuracy_is_labelled_when_scored_with_ties(tmp_path):
    """Records without exact scoring's 1/k credit are labelled as scored with ties; exact ones are not."""
    import pandas as pd

    folder = tmp_path / "scaleout"
    (folder / "x-fine-tuned").mkdir(parents=True)
    frame = pd.DataFrame({"id": ["a", "b"], "answer": [0, 1], "pred": [0, 0], "correct": [True, False]})
    frame.to_parquet(folder / "x-fine-tuned" / "predictions.parquet")
    assert pages_perf._scored_with_ties(folder)
    frame.assign(credit=[1.0, 0.0]).to_parquet(folder / "x-fine-tuned" / "predictions.parquet")
    assert not pages_perf._scored_with_ties(folder)
    assert pages_perf._scored_with_ties(ROOT / "results" / "scaleout")  # the committed two-GPU records predate it
