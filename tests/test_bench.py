"""The benchmark on a tiny random Gemma on the CPU: end to end with a record, same real tokens for both training
recipes, the harness-style scorer agrees with the one-pass scorer, and the FLOP accounting."""
import json
import random

import pytest
import torch

from medcore import bench, lora, models
from medcore.config import LoraConfig
from medcore.evaluate import harness_loglikelihood_choices, score_choices
from medcore.prompts import IGNORE_INDEX

TINY = "random:tiny-gemma"


def write_source(folder, n=48, seed=0):
    """A small MedMCQA dev.json (original schema, 1-based cop) with short questions for the byte tokenizer."""
    rng = random.Random(seed)
    with open(folder / "dev.json", "w") as f:
        for i in range(n):
            words = " ".join(f"w{rng.randrange(50)}" for _ in range(rng.randrange(2, 12)))
            f.write(json.dumps({"id": f"q{i}", "question": f"Q{i} {words}?", "opa": "alpha", "opb": "beta",
                                "opc": "gamma", "opd": "delta", "cop": 1 + i % 4, "choice_type": "single",
                                "exp": None, "subject_name": "Anatomy", "topic_name": None}) + "\n")
    return f"local:{folder}"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_source(tmp_path_factory.mktemp("medmcqa"))


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer(TINY)


@pytest.fixture(scope="module")
def run(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--", "--model", TINY, "--precision", "bf16", "--steps", "2", "--warmup", "1",
            "--baseline-batch-size", "4", "--pad-length", "128", "--token-budget", "256", "--max-batch-size", "8",
            "--n-questions", "6", "--score-batch-size", "4", "--matmul-size", "64", "--levers", "ckpt,score_batch,score_autocast,cudnn,peft_cast",
            "--score-batch-sizes", "2", "--profile", "--source", source, "--out", str(out)]
    return bench.main(argv), out


def test_end_to_end_writes_a_record(run, capsys):
    metrics, out = run
    record = out / "bench-tiny-gemma-cpu"
    assert metrics["record"] == str(record)
    saved = json.loads((record / "metrics.json").read_text())
    for key in ("device", "matmul_tflops", "train_speedup_real_tokens", "train_mfu", "train_peak_memory_gb",
                "score_speedup", "score_seconds_4183", "training", "scoring", "scoring_check", "objective_check",
                "levers", "targets", "conditions"):
        assert key in saved, key
    for key in ("device_name", "torch", "transformers", "bitsandbytes", "model", "real_weights", "precision",
                "token_budget", "baseline_batch_size", "score_batch_size", "mean_prompt_tokens", "steps"):
        assert key in saved["conditions"], key
    assert [r["recipe"] for r in saved["training"]] == ["medcore", "baseline"]
    assert saved["conditions"]["real_weights"] is False
    assert json.loads((record / "environment.json").read_text())["real_weights"] is False
    assert json.loads((record / "config.json").read_text())["model"] == TINY
    assert [t["conditions_match"] for t in saved["targets"]] == [False] * 5  # a CPU run is not the H200 target
    assert saved["levers"][0]["variant"] == "gradient_checkpointing=on" and saved["levers"][0]["error"] is None
    assert saved["complete"] is True
    for row in saved["scoring"]:  # each scorer timed twice: a first (cold) pass and a second one
        assert row["cold_seconds"] > 0 and row["seconds"] > 0
    for row in saved["training"] + saved["scoring"]:
        assert row["seconds"] > 0 and row["peak_memory_bytes"] > 0


def test_both_recipes_train_on_the_same_real_tokens(run):
    metrics, _ = run
    med, base = metrics["training"]
    assert med["examples"] == base["examples"] == 2 * 4
    assert med["real_tokens"] == base["real_tokens"] and med["labelled"] == base["labelled"] == 8
    assert base["padded_tokens"] == 8 * 128 and med["padded_tokens"] < base["padded_tokens"]
    # warm-up: --warmup steps, then one untimed step per batch shape of the timed batches (each shape seen before
    # the clock); the baseline's batches all share one padded shape
    assert base["warmup_steps"] == 1 + 1 and base["steps"] == 2
    assert 1 + 1 <= med["warmup_steps"] <= 1 + med["steps"]
    oc = metrics["objective_check"]  # same rows, same objective: the losses agree
    assert oc["abs_diff"] < 1e-3 * max(1.0, abs(oc["baseline_loss"]))


def test_batches_count_real_tokens_alike(source, tok):
    records = bench.load_records(source)[:10]
    examples = bench.encode_training_examples(records, tok, 128)
    med = bench.medcore_batches(examples, token_budget=256, max_batch_size=3, pad_id=0)
    base = bench.baseline_batches(examples, batch_size=4, pad_length=128, pad_id=0)
    a, b = bench.batch_tokens(med), bench.batch_tokens(base)
    assert a["real_tokens"] == b["real_tokens"] == sum(e["length"] for e in examples)
    assert a["examples"] == b["examples"] == 10 and a["labelled"] == b["labelled"] == 10
    assert all(x["input_ids"].numel() <= 256 and x["input_ids"].shape[0] <= 3 for x in med)
    assert all(x["input_ids"].shape[1] == 128 for x in base) and b["padded_tokens"] == 10 * 128
    for batch in base:  # padding carries no label and no attention
        pad = batch["attention_mask"] == 0
        assert (batch["labels"][pad] == IGNORE_INDEX).all()


def test_harness_style_agrees_with_one_pass(run, source, tok):
    metrics, _ = run
    assert metrics["scoring_check"]["agreement"] == 1.0
    assert metrics["scoring"][1]["forward_sequences"] == 4 * metrics["scoring"][0]["forward_sequences"]
    model = models.load_model(TINY, dtype=torch.float32)  # float32: the batched and unbatched sums agree tightly
    records = bench.load_records(source)[:6]
    batched = bench.harness_style_scores(model, tok, records, batch_size=5)
    ref = harness_loglikelihood_choices(model, tok, records)
    one = score_choices(model, tok, records, batch_size=3, progress=False)
    letters = ["A", "B", "C", "D"]
    assert batched["loglik"] == pytest.approx(ref[[f"loglik_{x}" for x in letters]].to_numpy(), abs=1e-4)
    assert batched["loglik"] == pytest.approx(one[[f"logprob_{x}" for x in letters]].to_numpy(), abs=1e-4)
    assert (batched["pred"] == one["pred"].to_numpy()).all()


def test_flop_accounting_for_known_parameter_counts():
    tiny = models.load_model(TINY)
    # tiny-gemma: per layer q 64x64 + k,v 64x32 + o 64x64 + MLP 3 x 64x128 + 2 norms of 64; 2 layers + final norm
    assert bench.non_embedding_parameters(tiny) == 2 * (4096 + 2048 + 2048 + 4096 + 3 * 64 * 128 + 128) + 64
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # Gemma-2B's shape without allocating it: 1.98 B non-embedding parameters
        gemma = AutoModelForCausalLM.from_config(models.model_config("random:gemma-2b"))
    n = bench.non_embedding_parameters(gemma)
    assert n == 18 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 16384 + 2 * 2048) + 2048 == 1_981_884_416
    assert bench.train_flops_per_token(n) == 6 * n and bench.score_flops_per_token(n) == 2 * n
    # 10k tokens/s at 6N on a 790 TFLOP/s ceiling: 15 % MFU
    assert bench.mfu(10_000, bench.train_flops_per_token(n), 790e12) == pytest.approx(10_000 * 6 * n / 790e12)
    assert bench.mfu(10_000, 6 * n, 790e12) == pytest.approx(0.1505, abs=1e-4)


def test_targets_are_computed_from_the_measurements():
    cond = {"device_type": "cuda", "model": "random:gemma-2b", "precision": "nf4", "token_budget": 4096,
            "gradient_checkpointing": True}
    m = {"training": [{"recipe": "medcore", "real_tokens_per_s": 9000.0, "mfu": 0.36, "peak_memory_bytes": 5.5e9},
                      {"recipe": "baseline", "real_tokens_per_s": 3000.0, "mfu": 0.1, "peak_memory_bytes": 17e9}],
         "scoring": [{"questions": 4183, "questions_per_s": 500.0}, {"questions": 4183, "questions_per_s": 150.0}]}
    rows = bench.targets(m, cond)
    assert [r["met"] for r in rows] == [True, True, True, False, True]
    assert all(r["conditions_match"] for r in rows)
    assert rows[2]["measured"] == pytest.approx(4183 / 500)
    m["scoring"][0]["cold_seconds"] = 12.0  # a first pass timed: the 10-s target reads it
    assert bench.targets(m, cond)[2]["measured"] == 12.0 and not bench.targets(m, cond)[2]["met"]
    del m["scoring"][0]["cold_seconds"]
    rows = bench.targets(m, {**cond, "gradient_checkpointing": False})
    assert [r["conditions_match"] for r in rows] == [True, True, True, True, False]


def test_arguments():
    cfg = bench.parse_args(["--", "--levers", "all", "--gradient-checkpointing"])
    assert cfg.levers == list(bench.LEVERS) and cfg.gradient_checkpointing and cfg.model == "random:gemma-2b"
    with pytest.raises(SystemExit):
        bench.parse_args(["--levers", "warp-drive"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--token-budget", "128", "--pad-length", "256"])
    variants = bench.lever_variants(["budget", "optim", "attn"], cfg, "paged_adamw_8bit", "sdpa")
    assert [v["variant"] for v in variants] == ["token_budget=8192 (max rows 128)", "token_budget=16384 (max rows 256)",
                                                "optimizer=adamw_torch", "attention=eager"]
    again = bench.lever_variants(["repeat", "optim", "repeat"], cfg, "paged_adamw_8bit", "sdpa")
    assert [v["lever"] for v in again] == ["repeat", "optim", "repeat"]  # the drift check brackets the others
    assert set(again[0]) == {"lever", "variant"}  # it changes nothing
    cfg = bench.parse_args(["--budgets", "4096,32768", "--score-batch-sizes", "128,512"])
    variants = bench.lever_variants(["budget", "score_batch"], cfg, "paged_adamw_8bit", "sdpa")
    assert [v["variant"] for v in variants] == ["token_budget=32768 (max rows 512)", "one-pass scoring, batch 128",
                                                "one-pass scoring, batch 512"]
    assert bench.cold_sizes(256) == (240, 272) and bench.cold_sizes(4) == (3, 5) and bench.cold_sizes(1) == (1, 2)
    for bad in (["--budgets", "8k"], ["--budgets", "128"], ["--score-batch-sizes", "0"], ["--score-batch-sizes", ""]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_distinct_shapes_keeps_the_first_batch_of_each_shape():
    def batch(rows, length, tag):
        return {"input_ids": torch.full((rows, length), tag)}
    batches = [batch(2, 5, 0), batch(3, 5, 1), batch(2, 5, 2), batch(2, 6, 3), batch(3, 5, 4)]
    assert [int(b["input_ids"][0, 0]) for b in bench.distinct_shapes(batches)] == [0, 1, 3]


def test_scoring_lever_and_profile_are_recorded(run):
    metrics, _ = run
    lever = metrics["levers"][1]
    assert lever["lever"] == "score_batch" and lever["score_batch_size"] == 2 and lever["error"] is None
    assert lever["questions"] == metrics["scoring"][0]["questions"] == 6 and lever["questions_per_s"] > 0
    for name in ("train", "score"):
        prof = metrics["profile"][name]
        assert prof["wall_ms_per_step"] > 0 and prof["aten_calls_per_step"] > 100  # a forward is many operators
        assert prof["top_cpu_ops"] and all(o["self_cpu_ms_per_step"] >= 0 for o in prof["top_cpu_ops"])
        assert prof["gpu_kernel_ms_per_step"] == 0  # no CUDA here: no kernel time is invented
    assert metrics["profile"]["score"]["steps"] == 2  # 6 questions in batches of 4
    autocast, cudnn_off, *cold, peft_cast = metrics["levers"][2:]
    # the CPU bench runs without autocast: the lever is refused with its reason, and the run goes on
    assert peft_cast["lever"] == "peft_cast" and "needs bf16 autocast" in peft_cast["error"]
    assert autocast["autocast"] is True and autocast["score_batch_size"] == 4
    # the adapter's path in bf16 instead of float32: the scores move by bf16 rounding only
    assert autocast["max_abs_logprob_diff_vs_base"] < 0.05
    assert cudnn_off["cudnn"] is False and cudnn_off["error"] is None and cudnn_off["real_tokens_per_s"] > 0
    assert [(r["score_batch_size"], r["cudnn"]) for r in cold] == [(3, True), (4 + 1, False)]
    assert all(r["cold_seconds"] > 0 and r["seconds"] > 0 for r in cold)


def test_a_run_stopped_midway_keeps_what_it_measured(source, tmp_path, monkeypatch):
    calls = []

    def lever_then_stop(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # as if the run were stopped during its second lever
        calls.append(1)
        return {**args[1], "real_tokens_per_s": 1.0, "examples_per_s": 1.0, "peak_memory_bytes": 1, "error": None}
    monkeypatch.setattr(bench, "run_lever", lever_then_stop)
    argv = ["--model", TINY, "--precision", "bf16", "--steps", "1", "--warmup", "1", "--baseline-batch-size", "2",
            "--pad-length", "128", "--token-budget", "256", "--max-batch-size", "4", "--n-questions", "2",
            "--score-batch-size", "2", "--matmul-size", "32", "--levers", "repeat,ckpt", "--source", source,
            "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    saved = json.loads((tmp_path / "bench-tiny-gemma-cpu" / "metrics.json").read_text())
    assert saved["complete"] is False and [r["lever"] for r in saved["levers"]] == ["repeat"]
    assert [r["recipe"] for r in saved["training"]] == ["medcore", "baseline"] and len(saved["scoring"]) == 2


def test_memory_target_reads_the_row_at_4096_tokens_with_checkpointing():
    cond = {"device_type": "cuda", "model": "random:gemma-2b", "precision": "nf4", "token_budget": 16384,
            "gradient_checkpointing": True}
    m = {"training": [{"recipe": "medcore", "real_tokens_per_s": 9000.0, "mfu": 0.36, "peak_memory_bytes": 9e9},
                      {"recipe": "baseline", "real_tokens_per_s": 3000.0, "mfu": 0.1, "peak_memory_bytes": 17e9}],
         "scoring": [{"questions": 4183, "questions_per_s": 500.0}, {"questions": 4183, "questions_per_s": 150.0}],
         "levers": [{"lever": "budget", "variant": "token_budget=8192", "token_budget": 8192,
                     "gradient_checkpointing": True, "peak_memory_bytes": 6.5e9},
                    {"lever": "budget", "variant": "token_budget=4096", "token_budget": 4096,
                     "gradient_checkpointing": True, "peak_memory_bytes": 3.7e9}]}
    memory = bench.targets(m, cond)[4]
    assert memory["measured"] == pytest.approx(3.7) and memory["met"] and memory["conditions_match"]
    assert "token_budget=4096" in memory["target"]
    m["levers"].pop()  # no row at the target's setting: the base row is shown, not under the conditions
    memory = bench.targets(m, cond)[4]
    assert memory["measured"] == pytest.approx(9.0) and not memory["met"] and not memory["conditions_match"]


def test_cli_exit_status_is_zero_after_a_bench(monkeypatch):
    from medcore.__main__ import main as cli

    monkeypatch.setattr(bench, "main", lambda argv: {"record": "somewhere"})  # bench returns its metrics
    assert cli(["bench", "--model", TINY]) == 0


def test_medcore_recipe_leaves_lora_inputs_in_bf16_under_cuda_autocast_only():
    """The bench's medcore rows skip peft's float32 copy of each LoRA input where they run under autocast (CUDA),
    as train.train does (its equivalence test is in test_train); the peft_cast lever and CPU runs keep it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = lora.attach_adapter(models.load_model(TINY), LoraConfig(r=4), quantized=False)

    def flags():
        return {m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)}
    with bench.medcore_recipe(model, torch.device("cuda"), compile=False):
        assert flags() == {False}
    assert flags() == {True}
    with bench.medcore_recipe(model, torch.device("cuda"), compile=False, lora_input_float32=True):
        assert flags() == {True}
    with bench.medcore_recipe(model, torch.device("cpu"), compile=False):
        assert flags() == {True}


def test_too_few_questions_are_refused_before_any_measurement(source, tmp_path, monkeypatch):
    """--steps beyond the questions: a clear error with the largest --steps that fits, before the ceiling matmul
    or the model load spend any time."""
    monkeypatch.setattr(bench, "matmul_rate", lambda *a, **k: pytest.fail("measured before the check"))
    argv = ["--model", TINY, "--steps", "20", "--warmup", "1", "--baseline-batch-size", "4", "--max-batch-size", "8",
            "--pad-length", "128", "--token-budget", "256", "--source", source, "--out", str(tmp_path)]
    with pytest.raises(ValueError, match=r"48 questions .* cannot feed 20 steps of 4 plus warm-up \(88\); "
                                         r"use at most --steps 10 with --warmup 1"):
        bench.main(argv)
    assert not any(tmp_path.iterdir())  # no record
