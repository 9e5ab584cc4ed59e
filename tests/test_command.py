"""The benchmark on a tiny random Gemma on the CPU: end to end with a record whose medcore rows are the product's
own functions with the profile's settings, the harness-style scorer agrees with the one-pass scorer, levers that
fail or a run stopped midway keep what was measured."""
import json
import random

import pytest
import torch

from medcore import models, train
from medcore.bench import command as bench
from medcore.evaluate import score_choices
from medcore.harness_reference import harness_loglikelihood_choices

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


SETTINGS = ["--model", TINY, "--set", "quant.precision=bf16", "--set", "train.max_steps=-1", "--set", "train.epochs=1",
            "--set", "train.token_budget=256", "--set", "train.max_batch_size=8", "--set", "data.max_length=128",
            "--set", "eval.batch_size=4", "--steps", "2", "--warmup", "1", "--baseline-batch-size", "4",
            "--pad-length", "128", "--n-questions", "6", "--matmul-size", "64", "--n-train", "16"]


@pytest.fixture(scope="module")
def run(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--", "--profile", "ci", *SETTINGS, "--levers", "ckpt,budget,score_batch,lora_input_float32", "--budgets", "128",
            "--score-batch-sizes", "2", "--source", source, "--out", str(out)]
    cfg, opts = bench.parse_args(argv)
    return bench.run_bench(cfg, opts), out


def test_end_to_end_writes_a_record_of_the_product_path(run):
    metrics, out = run
    record = out / "bench-tiny-gemma-cpu"
    assert metrics["record"] == str(record)
    saved = json.loads((record / "metrics.json").read_text())
    assert saved["code_paths"] == {"training": "medcore.train.train", "scoring": "medcore.evaluate.score_choices"}
    assert [r["recipe"] for r in saved["training"]] == ["medcore", "baseline"]
    assert saved["training"][0]["code_path"] == "medcore.train.train"
    assert saved["scoring"][0]["code_path"] == "medcore.evaluate.score_choices"
    config = json.loads((record / "config.json").read_text())  # the one RunConfig schema, as a user's run
    assert config["model"]["source"] == TINY and config["train"]["token_budget"] == 256 and config["name"] == "ci"
    env = json.loads((record / "environment.json").read_text())
    assert env["real_weights"] is False and env["options"]["steps"] == 2 and env["schema_version"] == 2
    assert [t["conditions_match"] for t in saved["targets"]] == [False] * len(saved["targets"])  # not the H200
    # the record holds what the run met; its settings are config.json and its versions environment.json, once each
    assert "conditions" not in saved and saved["run"]["device_type"] == "cpu" and saved["run"]["n_questions_scored"] == 6
    assert not {"model", "precision", "lora_r", "torch"} & set(saved["run"]) and env["packages"]["torch"]
    assert [(r["lever"], r["error"]) for r in saved["levers"]] == [
        ("ckpt", None), ("budget", None), ("score_batch", None), ("lora_input_float32", None)]
    assert saved["levers"][0]["gradient_checkpointing"] is True  # the ci profile trains without: toggled on
    assert saved["levers"][1]["token_budget"] == 128 and saved["levers"][3]["lora_input_float32"] is True
    assert saved["complete"] is True
    for row in saved["scoring"]:  # each scorer timed twice: a first (cold) pass and a second one
        assert row["cold_seconds"] > 0 and row["seconds"] > 0 and row["peak_memory_bytes"] > 0
    med = saved["training"][0]
    assert med["train_wall_seconds"] >= med["step_seconds"] > 0 and saved["medcore_wall_seconds"] > med["step_seconds"]


def test_medcore_row_is_one_epoch_of_train_over_every_question(run, source, tok):
    """The medcore row trains what `medcore train` would: every loaded question once (epochs=1), in the product's
    token-budget batches; the real tokens counted by train.train are those of the encoded questions."""
    metrics, _ = run
    med, base = metrics["training"]
    records = bench.load_records(source, seed=0)[:16]
    encoded = train.encode_dataset(__import__("datasets").Dataset.from_list(records), tok, 128)
    assert med["examples"] == len(records) == 16
    assert med["real_tokens"] == sum(encoded["length"])
    assert base["examples"] == 2 * 4 and base["padded_tokens"] == 8 * 128
    oc = base["objective_check"]  # same rows, same objective: the losses agree
    assert oc["abs_diff"] < 1e-3 * max(1.0, abs(oc["baseline_loss"]))


def test_harness_style_agrees_with_one_pass(run, source, tok):
    metrics, _ = run
    assert metrics["scoring_check"]["agreement"] == 1.0
    assert metrics["scoring"][1]["forward_sequences"] == 4 * metrics["scoring"][0]["forward_sequences"]
    model = models.load_model(TINY, dtype=torch.float32)  # float32: the batched and unbatched sums agree tightly
    records = bench.load_records(source, seed=0)[:6]
    batched = harness_loglikelihood_choices(model, tok, records, batch_size=5, share_forwards=False)  # the peer
    ref = harness_loglikelihood_choices(model, tok, records)
    one = score_choices(model, tok, records, batch_size=3, progress=False)
    letters = ["A", "B", "C", "D"]
    loglik = batched[[f"loglik_{x}" for x in letters]].to_numpy()
    assert loglik == pytest.approx(ref[[f"loglik_{x}" for x in letters]].to_numpy(), abs=1e-4)
    assert loglik == pytest.approx(one[[f"logprob_{x}" for x in letters]].to_numpy(), abs=1e-4)
    assert (batched["pred"].to_numpy() == one["pred"].to_numpy()).all()


def test_a_run_stopped_midway_keeps_what_it_measured(source, tmp_path, monkeypatch):
    real, calls = bench.product_training, []

    def train_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the run were stopped during its second lever
        return real(*args, **kwargs)
    monkeypatch.setattr(bench, "product_training", train_then_stop)
    cfg, opts = bench.parse_args(["--profile", "ci", *SETTINGS, "--levers", "repeat,ckpt", "--source", source,
                                  "--out", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(cfg, opts)
    saved = json.loads((tmp_path / "bench-tiny-gemma-cpu" / "metrics.json").read_text())
    assert saved["complete"] is False and [r["lever"] for r in saved["levers"]] == ["repeat"]
    assert [r["recipe"] for r in saved["training"]] == ["medcore", "baseline"] and len(saved["scoring"]) == 2


def test_a_failing_lever_is_recorded_and_the_others_run(source, tmp_path):
    cfg, opts = bench.parse_args(["--profile", "ci", *SETTINGS, "--levers", "budget,repeat", "--budgets", "8",
                                  "--source", source, "--out", str(tmp_path)])
    levers = bench.run_bench(cfg, opts)["levers"]
    assert levers[0]["error"] and "token_budget" in levers[0]["error"] and levers[1]["error"] is None


def test_cli_exit_status_is_zero_after_a_bench(monkeypatch):
    from medcore.__main__ import main as cli

    monkeypatch.setattr(bench, "run_bench", lambda cfg, opts: {"record": "somewhere"})
    assert cli(["bench", "--model", TINY]) == 0


def test_too_few_questions_are_refused_before_any_measurement(source, tmp_path, monkeypatch):
    """--steps beyond the questions: a clear error before the ceiling matmul or the model load spend any time."""
    monkeypatch.setattr(bench, "matmul_rate", lambda *a, **k: pytest.fail("measured before the check"))
    cfg, opts = bench.parse_args(["--profile", "ci", *SETTINGS, "--steps", "20", "--source", source,
                                  "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"48 questions cannot feed 20 baseline steps of 4 plus 1 warm-up steps"):
        bench.run_bench(cfg, opts)
    assert not any(tmp_path.iterdir())  # no record
