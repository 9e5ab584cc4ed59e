"""medcore/bench/peers.py directly: FLOP accounting (on the tiny model and on the Gemma-2B shape), the matmul ceiling,
the tutorial batches, adapter save/restore."""
import pytest
import torch

from medcore import models
from medcore.bench import peers

TINY = "random:tiny-gemma"


def test_flop_accounting_and_mfu():
    assert peers.train_flops_per_token(10) == 60.0 and peers.score_flops_per_token(10) == 20.0
    assert peers.mfu(100.0, 60.0, 12_000.0) == pytest.approx(0.5)
    assert peers.mfu(100.0, 60.0, 0.0) != peers.mfu(100.0, 60.0, 0.0)  # nan without a ceiling


def test_flop_accounting_for_known_parameter_counts():
    tiny = models.load_model(TINY)
    # tiny-gemma: per layer q 64x64 + k,v 64x32 + o 64x64 + MLP 3 x 64x128 + 2 norms of 64; 2 layers + final norm
    assert peers.non_embedding_parameters(tiny) == 2 * (4096 + 2048 + 2048 + 4096 + 3 * 64 * 128 + 128) + 64
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # Gemma-2B's shape without allocating it: 1.98 B non-embedding parameters
        gemma = AutoModelForCausalLM.from_config(models.model_config("random:gemma-2b"))
    n = peers.non_embedding_parameters(gemma)
    assert n == 18 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 16384 + 2 * 2048) + 2048 == 1_981_884_416
    assert peers.train_flops_per_token(n) == 6 * n and peers.score_flops_per_token(n) == 2 * n
    # 10k tokens/s at 6N on a 790 TFLOP/s ceiling: 15 % MFU
    assert peers.mfu(10_000, peers.train_flops_per_token(n), 790e12) == pytest.approx(10_000 * 6 * n / 790e12)
    assert peers.mfu(10_000, 6 * n, 790e12) == pytest.approx(0.1505, abs=1e-4)


def test_matmul_rate_on_the_cpu():
    out = peers.matmul_rate(torch.device("cpu"), 64, reps=2, warmup=1)
    assert out["size"] == 64 and out["reps"] == 2 and out["flops"] > 0 and out["timer"] == "perf_counter"


def test_baseline_batches_pad_every_row_to_the_pad_length():
    examples = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": [-100] * (n - 1) + [5]} for n in (3, 5, 4)]
    batches = peers.baseline_batches(examples, batch_size=2, pad_length=8, pad_id=0)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 8), (1, 8)]
    assert int(batches[0]["attention_mask"].sum()) == 8 and int((batches[0]["labels"] != -100).sum()) == 2


def test_adapter_state_round_trip_restores_only_the_trainable_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    state = peers.adapter_state(model)
    assert "0.weight" not in state and "1.weight" in state
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    peers.restore_adapter(model, state)
    assert torch.equal(model[1].weight, state["1.weight"]) and torch.equal(model[0].weight, frozen + 1.0)
