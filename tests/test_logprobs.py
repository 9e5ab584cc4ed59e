"""The forward pass of scoring: full-vocabulary log-probabilities at the last position, the float32 head in chunks."""
import torch

from medcore import logprobs
from medcore.logprobs import last_position_logprobs


def test_full_vocab_logprobs_match_full_forward(tiny):
    ids = torch.tensor([[2, 40, 50, 60, 70], [2, 41, 51, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    with torch.inference_mode():
        lp = last_position_logprobs(tiny, ids, mask)
        full0 = torch.log_softmax(tiny(input_ids=ids[:1]).logits[0, -1].float(), -1)
        full1 = torch.log_softmax(tiny(input_ids=ids[1:, :3]).logits[0, -1].float(), -1)
    assert lp.shape == (2, tiny.config.vocab_size)
    torch.testing.assert_close(lp, torch.stack([full0, full1]), atol=1e-5, rtol=0)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2))


def test_float32_head_in_chunks_equals_the_whole_head(tiny, monkeypatch):
    ids = torch.tensor([[2, 40, 50, 60, 70], [2, 41, 51, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    tiny.config.final_logit_softcapping = 3.0
    try:
        with torch.inference_mode():
            whole = last_position_logprobs(tiny, ids, mask)
            monkeypatch.setattr(logprobs, "HEAD_CHUNK_ROWS", 50)  # the tiny vocabulary (264) in six chunks
            letters = last_position_logprobs(tiny, ids, mask, token_ids=[7, 100, 263])
            model_forward = torch.log_softmax(tiny(input_ids=ids[:1]).logits[0, -1].float(), -1)
    finally:
        tiny.config.final_logit_softcapping = None
    torch.testing.assert_close(letters, whole[:, [7, 100, 263]], atol=1e-6, rtol=0)
    torch.testing.assert_close(whole[0], model_forward, atol=1e-5, rtol=0)
