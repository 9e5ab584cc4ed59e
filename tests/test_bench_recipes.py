"""medcore/bench/peers.py directly: FLOP accounting, the matmul ceiling, the tutorial batches, adapter save/restore."""
import pytest
import torch

from medcore.bench import peers as br


def test_flop_accounting_and_mfu():
    assert br.train_flops_per_token(10) == 60.0 and br.score_flops_per_token(10) == 20.0
    assert br.mfu(100.0, 60.0, 12_000.0) == pytest.approx(0.5)
    assert br.mfu(100.0, 60.0, 0.0) != br.mfu(100.0, 60.0, 0.0)  # nan without a ceiling


def test_matmul_rate_on_the_cpu():
    out = br.matmul_rate(torch.device("cpu"), 64, reps=2, warmup=1)
    assert out["size"] == 64 and out["reps"] == 2 and out["flops"] > 0 and out["timer"] == "perf_counter"


def test_baseline_batches_pad_every_row_to_the_pad_length():
    examples = [{"input_ids": [1] * n, "attention_mask": [1] * n, "labels": [-100] * (n - 1) + [5]} for n in (3, 5, 4)]
    batches = br.baseline_batches(examples, batch_size=2, pad_length=8, pad_id=0)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 8), (1, 8)]
    assert int(batches[0]["attention_mask"].sum()) == 8 and int((batches[0]["labels"] != -100).sum()) == 2


def test_adapter_state_round_trip_restores_only_the_trainable_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    state = br.adapter_state(model)
    assert "0.weight" not in state and "1.weight" in state
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    br.restore_adapter(model, state)
    assert torch.equal(model[1].weight, state["1.weight"]) and torch.equal(model[0].weight, frozen + 1.0)
