"""The pieces the Trainer calls around each step: token-budget batches, real-token counts, the finite-loss guard,
the step clock, the last complete checkpoint (train()'s use of them is tested in test_train)."""
import pytest
import torch

from medcore import steps


def test_batch_sampler_covers_every_example_and_reshuffles_per_epoch():
    sampler = steps.TokenBudgetBatchSampler([5, 9, 3, 7, 8, 2, 6, 4], token_budget=16, max_batch_size=4,
                                            shuffle=True, seed=0)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(8)) and len(first) == len(sampler)
    assert all(len(b) * max([5, 9, 3, 7, 8, 2, 6, 4][i] for i in b) <= 16 for b in first)
    assert list(sampler) == first  # same epoch, same order
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert any(o != orders[0] for o in orders[1:])


def test_incomplete_checkpoint_is_skipped(tmp_path):
    for step, state in [(2, "{}"), (4, '{"global_st'), (6, None)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert steps.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert steps.last_checkpoint(tmp_path / "missing") is None


def test_collator_counts_real_tokens_on_the_cpu_as_an_int():
    collate = steps.RealTokenCounts(lambda rows: {"attention_mask": torch.tensor(rows)})
    batch = collate([[1, 1, 0], [1, 0, 0]])
    assert batch[steps.REAL_TOKENS] == 3 and isinstance(batch[steps.REAL_TOKENS], int)


def test_finite_guard_names_the_first_bad_step_and_prefers_the_loss_at_a_tie(tmp_path):
    guard = steps.FiniteGuard()
    guard.note("loss", torch.tensor(1.0), 1)
    guard.check(tmp_path)  # all finite: nothing raised
    guard.note("gradient", torch.tensor(float("inf")), 3)
    guard.note("loss", torch.tensor(float("nan")), 3)
    guard.note("loss", torch.tensor(float("inf")), 5)  # later bad steps do not replace the first
    with pytest.raises(steps.NonFiniteLossError, match=r"training loss is nan at step 3; no checkpoint was written"):
        guard.check(tmp_path)


def test_finite_guard_reads_its_flags_only_where_the_trainer_logs_saves_evaluates_or_stops(tmp_path):
    from transformers import TrainerControl

    guard, args = steps.FiniteGuard(), type("Args", (), {"output_dir": str(tmp_path)})()
    guard.note("loss", torch.tensor(float("nan")), 2)
    guard.on_step_end(args, None, TrainerControl())  # no log, save, evaluation or stop: no read
    with pytest.raises(steps.NonFiniteLossError, match="step 2"):
        guard.on_step_end(args, None, TrainerControl(should_log=True))


def test_steady_rate_leaves_out_the_first_steps():
    seen = {"tokens": 0}
    clock = steps.ThroughputCallback(seen, skip=3)
    for seconds, tokens in [(10.0, 100)] * 3 + [(1.0, 100)] * 12:  # three slow first steps
        clock.steps.append((seconds, tokens))
    steady = clock.steady()
    assert steady["steady_steps"] == 12 and steady["steady_real_tokens_per_s"] == pytest.approx(100.0)
    assert steady["warmup_seconds"] == pytest.approx(3 * 10.0 - 3 * 1.0)  # what the first steps cost beyond steady
    assert steps.ThroughputCallback(None).steady()["steady_real_tokens_per_s"] is None
