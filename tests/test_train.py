"""Training on a tiny random Gemma on the CPU: the loss, what changes, resume, throughput record, NF4; bad input
named before the model runs, a non-finite loss or gradient stopping the run, incomplete checkpoints, determinism."""
import json
import logging
import math

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medcore import evaluate, lora, models, quantize, step_modes, train
from medcore.config import ConfigError, LoraConfig, QuantConfig, RunConfig
from medcore.prompts import Collator, PromptTooLongError
from tests.conftest import _records

TINY = "random:tiny-gemma3"


def records(n: int, seed: int = 0) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        words = " ".join(f"w{int(x)}" for x in torch.randint(0, 50, (int(torch.randint(3, 12, (1,), generator=g)),),
                                                               generator=g))
        rows.append({"id": str(i), "question": f"Q{i}: {words}?", "options": ["alpha", "beta", "gamma", "delta"],
                     "answer": i % 4, "subject": "Anatomy", "topic": None, "choice_type": "single",
                     "explanation": f"Because {words}."})
    return datasets.Dataset.from_list(rows)


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(TINY)


@pytest.fixture(scope="module")
def data(tokenizer):
    return train.encode_dataset(records(16), tokenizer, 128), train.encode_dataset(records(4, seed=1), tokenizer, 128)


def config(**train_values) -> RunConfig:
    cfg = RunConfig()
    cfg.data.max_length = 128
    cfg.lora = LoraConfig(r=4, alpha=8, dropout=0.1)
    values = dict(learning_rate=2e-2, token_budget=512, max_batch_size=4, warmup_ratio=0.0, logging_steps=1,
                  eval_steps=2, save_steps=100, gradient_checkpointing=True)
    for key, value in {**values, **train_values}.items():
        setattr(cfg.train, key, value)
    return cfg


def adapted(quantized: bool = False, dtype=torch.float32, lora_cfg=None):
    if quantized:
        model = quantize.load_quantized(TINY, QuantConfig("nf4", True), device="cpu", dtype=dtype)
    else:
        model = models.load_model(TINY, dtype=dtype)
    torch.manual_seed(0)
    return lora.attach_adapter(model, lora_cfg or config().lora, quantized=quantized)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_head_at_labelled_positions_equals_full_logits_loss(tokenizer, data, softcap):
    model = adapted()
    model.get_base_model().config.final_logit_softcapping = softcap
    batch = Collator(tokenizer.pad_token_id)([data[0][i] for i in range(4)])
    with torch.no_grad():
        full = model(**batch).loss
        ours = train.answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(ours, full, rtol=0, atol=1e-5)


def test_encode_dataset_labels_answer_or_explanation(tokenizer):
    plain = train.encode_dataset(records(3), tokenizer, 128)
    explained = train.encode_dataset(records(3), tokenizer, 128, with_explanation=True)
    assert [sum(x != -100 for x in row) for row in plain["labels"]] == [1, 1, 1]
    assert all(sum(x != -100 for x in row) > 3 for row in explained["labels"])
    assert plain["length"] == [len(r) for r in plain["input_ids"]]


def test_loss_falls_only_adapter_changes_and_result_is_written(tmp_path, data):
    model = adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(epochs=6)
    result = train.train(cfg, model, models.load_tokenizer(TINY), data[0].select(range(4)), data[1], tmp_path)
    losses = [row["loss"] for row in result.loss_history if "loss" in row]
    # one fixed batch, seen six times; tied 0.02-std embeddings bound the tiny model's logits (|logit| < ~1.5),
    # so from ln(264) = 5.6 the loss can fall by about one nat at most
    assert len(losses) == 6 and losses[-1] == min(losses) and losses[-1] < losses[0] - 0.4
    assert [row["step"] for row in result.loss_history if "eval_loss" in row] == [2, 4, 6]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in changed)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    written = json.loads((tmp_path / "train_result.json").read_text())
    assert written["loss_history"] == result.loss_history and written["adapter_dir"] == result.adapter_dir
    m = result.metrics
    assert m["global_step"] == 6 and m["examples"] == 24 and m["optimizer"] == "adamw_torch"
    assert 0 < m["real_tokens"] < 24 * 128 and m["real_tokens_per_s"] > 0 and m["examples_per_s"] > 0
    assert m["peak_memory_kind"] == "process_rss" and m["peak_memory_bytes"] > 10 * 2**20
    # steady rate: the same fixed batch every step, so it is the tokens of steps 2..6 over their seconds
    assert m["steady_steps"] == 5 and m["resident_memory_bytes"] is None  # no CUDA here
    assert m["steady_real_tokens_per_s"] > 0 and m["real_tokens"] % 6 == 0


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resumed_run_follows_the_uninterrupted_loss_curve(tmp_path, tokenizer, data):
    """Two epochs of 3 batches, dropout on; stopped mid-epoch 2 at a checkpoint, then resumed in a fresh model."""
    cfg = config(epochs=2, save_steps=4, eval_steps=100, warmup_ratio=0.2)
    ds = data[0].select(range(12))
    full = train.train(cfg, adapted(), tokenizer, ds, None, tmp_path / "full")
    part = train.train(cfg, adapted(), tokenizer, ds, None, tmp_path / "split", callbacks=[StopAt(4)])
    assert part.metrics["global_step"] == 4
    rest = train.train(cfg, adapted(), tokenizer, ds, None, tmp_path / "split", resume=True)
    assert rest.metrics["resumed_from"].endswith("checkpoint-4") and rest.metrics["global_step"] == 6
    assert [r["step"] for r in rest.loss_history] == [r["step"] for r in full.loss_history] == list(range(1, 7))
    for a, b in zip(rest.loss_history, full.loss_history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["learning_rate"] == pytest.approx(b["learning_rate"])


def test_nf4_model_trains_on_cpu(tmp_path, tokenizer, data):
    model = adapted(quantized=True)
    cfg = config(epochs=6, gradient_checkpointing=False)
    result = train.train(cfg, model, tokenizer, data[0].select(range(4)), None, tmp_path)
    losses = [row["loss"] for row in result.loss_history if "loss" in row]
    assert losses[-1] == min(losses) and losses[-1] < losses[0] - 0.4
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu"))


def test_an_8bit_optimizer_leaves_no_reference_to_the_trained_model(tmp_path, data, monkeypatch):
    # the Trainer registers each nn.Embedding with bitsandbytes' process-wide GlobalOptimManager for its 8-bit
    # optimizers; unless medcore drops that entry, every model trained in the process stays in memory
    import gc
    import weakref

    model = adapted()
    embedding = weakref.ref(model.get_input_embeddings())
    dropped, release = [], train.release_optimizer_overrides
    monkeypatch.setattr(train, "release_optimizer_overrides", lambda m: dropped.append(release(m)) or dropped[-1])
    train.train(config(max_steps=2, optimizer="adamw_8bit"), model, models.load_tokenizer(TINY),
                data[0].select(range(4)), None, tmp_path)
    del model
    gc.collect()
    assert dropped == [1] and embedding() is None


def test_compiled_decoder_layers_train_like_eager_and_are_put_back(tmp_path, tokenizer, data, capsys):
    """train.compile: each decoder layer torch.compile'd for the run, under gradient checkpointing with LoRA
    dropout on; random ops use eager RNG, so the compiled run draws the eager run's dropout masks and its loss
    curve matches step by step; the layers run eager again afterwards."""
    cfg = config(epochs=1, eval_steps=100, gradient_checkpointing=True)
    cfg.lora.dropout = 0.3
    cfg.train.max_batch_size = 2  # four steps: the first is warm-up (compilation), the rest steady
    ds = data[0].select(range(8))
    eager = train.train(cfg, adapted(lora_cfg=cfg.lora), tokenizer, ds, None, tmp_path / "e")
    cfg.train.compile = True
    model = adapted(lora_cfg=cfg.lora)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = train.train(cfg, model, tokenizer, ds, None, tmp_path / "c")
    assert counters["stats"]["unique_graphs"] >= 1  # the layers did run compiled
    warmup = compiled.metrics["warmup_seconds"]
    assert warmup > 0 and f"the first steps took {warmup:.1f} s more than steady steps" in capsys.readouterr().out
    assert len(compiled.loss_history) == len(eager.loss_history) >= 2
    for a, b in zip(compiled.loss_history, eager.loss_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
    assert all(layer._compiled_call_impl is None for layer in step_modes.decoder_layers(model))
    with pytest.raises(ValueError, match="model.layers"):
        step_modes.decoder_layers(torch.nn.Linear(2, 2))


def _cast_flags(model) -> set[bool]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)}


def _loss_and_grads(model, batch, context):
    model.zero_grad()
    with context, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = train.answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_inputs_left_in_bf16_under_autocast_change_nothing_for_lora(method):
    """Under bf16 autocast peft copies each LoRA input to the adapter's float32 and autocast casts it back for the
    matmul; without the copy (train.lora_input_float32) LoRA's loss and gradients are the same (dropout 0).
    DoRA keeps the copy: its magnitude terms use the input outside the matmuls and would change."""
    cfg = config()
    cfg.lora = LoraConfig(method=method, r=4, alpha=8, dropout=0.0)
    model = adapted(dtype=torch.bfloat16, lora_cfg=cfg.lora)
    for p in model.parameters():  # peft's float32 adapter weights, as attach_adapter leaves them on a GPU
        if p.requires_grad:
            p.data = p.data.float()
    for name, p in model.named_parameters():  # non-zero B, so the adapter contributes
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(5, 200, (2, 12))
    labels = torch.full_like(ids, train.IGNORE_INDEX).index_fill_(1, torch.tensor([11]), 7)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    seen = []
    first_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    first_a.register_forward_hook(lambda mod, args, out: seen.append(args[0].dtype))

    loss, grads = _loss_and_grads(model, batch, step_modes.lora_input_float32(model, cfg, on_cuda=False))
    inside = step_modes.lora_input_float32(model, cfg, on_cuda=True)
    with inside:
        flags_inside = _cast_flags(model)
    loss_off, grads_off = _loss_and_grads(model, batch, step_modes.lora_input_float32(model, cfg, on_cuda=True))
    assert _cast_flags(model) == {True}  # put back afterwards
    assert any(g.abs().sum() > 0 for g in grads)
    if method == "lora":
        assert flags_inside == {False} and seen == [torch.float32, torch.bfloat16]
        assert loss_off == pytest.approx(loss, abs=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_off))
    else:
        assert flags_inside == {True} and set(seen) == {torch.float32}
    cfg.lora.method, cfg.train.lora_input_float32 = "lora", True  # the setting that keeps peft's copy
    with step_modes.lora_input_float32(model, cfg, on_cuda=True):
        assert _cast_flags(model) == {True}


def test_bf16_training_runs_under_autocast_with_lora_inputs_left_in_bf16(tmp_path, tokenizer, data):
    """The GPU path on the CPU: a bf16 base with float32 LoRA weights, ``train.autocast=bf16`` and peft's input
    copy off (the CUDA default). accelerate wraps autocast around ``model.forward`` only, which the answer-only loss
    does not call; without its own autocast the bf16 input meets the float32 LoRA weights and the first step fails
    ("expected mat1 and mat2 to have the same dtype"). Training and evaluation forwards must run under autocast."""
    cfg = config(epochs=2, eval_steps=2, autocast="bf16")
    model = adapted(dtype=torch.bfloat16, lora_cfg=cfg.lora)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    seen = []
    step_modes.decoder_layers(model)[0].register_forward_hook(
        lambda mod, args, out: seen.append((mod.training, torch.is_autocast_enabled("cpu"))))
    during = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            during.append(_cast_flags(model))
    result = train.train(cfg, model, tokenizer, data[0], data[1], tmp_path, callbacks=[Spy()])
    assert during and all(flags == {False} for flags in during)  # peft's copy off in every step
    assert _cast_flags(model) == {True}  # and back on afterwards, for scoring
    assert {training for training, _ in seen} == {True, False}  # training steps and evaluation both ran
    assert all(autocast for _, autocast in seen)
    losses = [r["loss"] for r in result.loss_history if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert all(math.isfinite(r["eval_loss"]) for r in result.loss_history if "eval_loss" in r)
    # accelerate's wrapper is gone from model.forward: a forward afterwards returns the model's own bf16 logits,
    # not a float32 copy of every logit (a harness-style pass over a 256k vocabulary would double its memory)
    assert "_original_forward" not in model.__dict__ and model.forward.__func__ is type(model).forward
    ids = torch.tensor([[2, 5, 7, 9]])
    assert model(input_ids=ids).logits.dtype == torch.bfloat16


def test_training_writes_tensorboard_events_into_the_output_folder(tmp_path, tokenizer, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(epochs=4)
    assert cfg.train.report_to == "auto"  # tensorboard is a dependency, so auto means TensorBoard here
    train.train(cfg, adapted(), tokenizer, data[0].select(range(4)), data[1], tmp_path / "on")
    runs = list((tmp_path / "on" / "runs").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0])).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "train/train_samples_per_second"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4]

    cfg.train.report_to = "wandb"
    with pytest.raises(ValueError, match=r"train.report_to='wandb' is not allowed; choose one of: auto, tensorboard, none"):
        cfg.validate()
    cfg.train.report_to = "none"
    train.train(cfg, adapted(), tokenizer, data[0].select(range(4)), data[1], tmp_path / "off")
    assert not (tmp_path / "off" / "runs").exists()


# ---- bad input, non-finite loss, resume and determinism on the tiny random Gemma (Gemma-1 shape) ------------

TINY_GEMMA = "random:tiny-gemma"


def _cfg(**train_values) -> RunConfig:
    cfg = RunConfig()
    cfg.data.max_length = 128
    cfg.lora = LoraConfig(r=4, alpha=8, dropout=0.1)
    values = dict(learning_rate=1e-2, max_steps=3, token_budget=512, max_batch_size=4, warmup_ratio=0.0,
                  logging_steps=1, eval_steps=100, save_steps=100, gradient_checkpointing=False)
    for key, value in {**values, **train_values}.items():
        setattr(cfg.train, key, value)
    return cfg


def _adapted(seed: int = 0):
    model = models.load_model(TINY_GEMMA, dtype=torch.float32)
    torch.manual_seed(seed)
    return lora.attach_adapter(model, _cfg().lora, quantized=False)


NOT_A_MODEL = torch.nn.Linear(2, 2)  # train() must refuse bad input before a model would ever run


@pytest.mark.usefixtures("one_thread")
def test_long_question_is_cut_and_counted_in_training_metrics(tmp_path, tok, caplog):
    recs = _records(6)
    for r in recs[:2]:
        r["question"] = "A long history of fever, cough and weight loss. " * 12
    with caplog.at_level(logging.WARNING, logger="medcore.train"):
        encoded = train.encode_dataset(datasets.Dataset.from_list(recs), tok, 128)
    assert encoded["truncated"] == [True, True, False, False, False, False] and max(encoded["length"]) <= 128
    assert "2 questions cut to fit" in caplog.text
    for ids, rec in zip(encoded["input_ids"][:2], recs):  # the choices and the answer position survive the cut
        assert tok.decode(ids).replace(" ", "").endswith("D.delta\nAnswer:" + "ABCD"[rec["answer"]])
    result = train.train(_cfg(max_steps=1), _adapted(), tok, datasets.Dataset.from_list(recs),
                         datasets.Dataset.from_list(recs[:3]), tmp_path)
    m = result.metrics
    assert (m["truncated_train"], m["truncated_eval"], m["skipped_train"], m["n_train_examples"]) == (2, 2, 0, 6)


@pytest.mark.usefixtures("one_thread")
def test_choices_longer_than_max_length_name_the_record(tmp_path, tok):
    recs = _records(5)
    recs[3]["options"] = ["a very long option " * 20] * 4
    ds = datasets.Dataset.from_list(recs)
    with pytest.raises(PromptTooLongError, match=r"record 'q3': the choices alone take more than 127 tokens"):
        train.encode_dataset(ds, tok, 128)
    cfg = _cfg()
    with pytest.raises(PromptTooLongError, match="record 'q3'"):  # before anything runs (this is not a model)
        train.train(cfg, NOT_A_MODEL, tok, ds, None, tmp_path)
    with pytest.raises(PromptTooLongError, match="record 'q3'.*data.max_length"):
        evaluate.score_choices(NOT_A_MODEL, tok, recs, max_length=128, progress=False)
    cfg.data.on_invalid = "skip"
    assert train.encode_dataset(ds, tok, 128, on_invalid="skip")["id"] == ["q0", "q1", "q2", "q4"]
    m = train.train(cfg, _adapted(), tok, ds, None, tmp_path / "skip").metrics
    assert (m["skipped_train"], m["n_train_examples"], m["global_step"]) == (1, 5, 3)


# ---- bad config (the settings table and its command-line test are in test_config) ---------------------------

@pytest.mark.usefixtures("one_thread")
def test_token_budget_smaller_than_longest_encoded_example_is_named(tmp_path, tok):
    cfg = _cfg(token_budget=64)  # not validated: train() must catch it itself, before the model runs
    recs = _records(4)
    recs[2]["question"] = "Which of these is longest? " * 3
    lengths = train.encode_dataset(datasets.Dataset.from_list(recs), tok, 128)["length"]
    with pytest.raises(ConfigError) as err:
        train.train(cfg, NOT_A_MODEL, tok, datasets.Dataset.from_list(recs), None, tmp_path)
    assert f"train.token_budget=64 is smaller than a training example 'q2' ({max(lengths)} tokens)" in str(err.value)
    assert not any(tmp_path.iterdir())


# ---- non-finite loss ---------------------------------------------------------------------------------------------

def _poison_loss(monkeypatch, at_call: int, factor: float) -> dict:
    """Multiply the training loss of the `at_call`-th training call by `factor`; returns the call counter."""
    real, calls = train.answer_only_loss, {"n": 0, "real": train.answer_only_loss}

    def poisoned(model, *args):
        loss = real(model, *args)
        if model.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                return loss * factor
        return loss
    monkeypatch.setattr(train, "answer_only_loss", poisoned)
    return calls


@pytest.mark.usefixtures("one_thread")
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tok, monkeypatch):
    real = _poison_loss(monkeypatch, 3, float("nan"))["real"]
    cfg, ds = _cfg(max_steps=4, save_steps=2), datasets.Dataset.from_list(_records(8))
    with pytest.raises(train.NonFiniteLossError, match=r"training loss is nan at step 3; the last checkpoint, "
                                                       r".*checkpoint-2, is from before it"):
        train.train(cfg, _adapted(), tok, ds, None, tmp_path)
    saved = sorted(p.name for p in tmp_path.iterdir() if p.name != "runs")  # runs/: the TensorBoard events
    assert saved == ["checkpoint-2"]  # no adapter/, nothing after the NaN
    assert train.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    weights = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    monkeypatch.setattr(train, "answer_only_loss", real)  # the cause fixed, the run resumes from the good checkpoint
    resumed = train.train(cfg, _adapted(), tok, ds, None, tmp_path, resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2") and resumed.metrics["global_step"] == 4


@pytest.mark.usefixtures("one_thread")
def test_non_finite_gradient_stops_before_anything_is_saved_from_it(tmp_path, tok):
    class InfGradientAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                param = next(p for n, p in model.named_parameters() if p.requires_grad)
                param.register_hook(lambda g: g * float("inf"))

    model = _adapted()
    with pytest.raises(train.NonFiniteLossError, match="a gradient is NaN or infinite at step 2.*checkpoint-1"):
        train.train(_cfg(save_steps=1), model, tok, datasets.Dataset.from_list(_records(8)), None, tmp_path,
                    callbacks=[InfGradientAtStep2()])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "runs") == ["checkpoint-1"]
    weights = load_file(tmp_path / "checkpoint-1" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())  # nothing saved after the bad step


@pytest.mark.usefixtures("one_thread")
def test_a_bad_step_between_reads_is_named_by_its_own_step(tmp_path, tok, monkeypatch):
    # flags are read only at logging / saving steps: a NaN at step 2 is found at step 4 and still named step 2
    calls = _poison_loss(monkeypatch, 2, float("inf"))
    cfg = _cfg(max_steps=6, save_steps=4, logging_steps=4)
    with pytest.raises(train.NonFiniteLossError, match=r"training loss is inf at step 2; no checkpoint"):
        train.train(cfg, _adapted(), tok, datasets.Dataset.from_list(_records(12)), None, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != "runs"]  # checkpoint-4 never written
    assert calls["n"] == 4  # it ran on to the first read, no further


# ---- determinism -------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_same_seed_gives_identical_losses_and_predictions(tmp_path, tok):
    train_ds, questions = datasets.Dataset.from_list(_records(12)), _records(8, start=20)

    def run(name, seed):
        cfg = _cfg(seed=seed)
        model = _adapted(seed)
        history = train.train(cfg, model, tok, train_ds, None, tmp_path / name).loss_history
        return history, evaluate.score_choices(model, tok, questions, batch_size=4, max_length=128, progress=False)

    (h1, p1), (h2, p2), (h3, _) = run("a", 0), run("b", 0), run("c", 1)
    assert h1 == h2 and len(h1) == 3  # exactly equal: loss, learning rate, gradient norm at every step
    assert p1.equals(p2)  # predictions and every log-probability
    assert [r["loss"] for r in h3] != [r["loss"] for r in h1]  # the seed matters: the test can fail
