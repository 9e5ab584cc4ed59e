"""The harness-style reference scorer: the harness's context/continuation encoding, and batches that change only
rounding."""
import numpy as np

from medcore.harness_reference import harness_encode_pair, harness_loglikelihood_choices

LL = [f"loglik_{c}" for c in "ABCD"]


def test_batched_harness_reference_equals_batch_one(tiny, tok, questions):
    """Batches (sorted, right-padded, no mask) and unshared requests change only rounding, not the reference."""
    ref = harness_loglikelihood_choices(tiny, tok, questions[:6])
    peer = harness_loglikelihood_choices(tiny, tok, questions[:6], batch_size=5, share_forwards=False)
    assert ref.attrs["requests"] == peer.attrs["requests"] == peer.attrs["forward_sequences"] == 24
    assert ref.attrs["forward_sequences"] == 6  # one-token continuations share their forward
    assert peer.attrs["real_tokens"] == 4 * ref.attrs["real_tokens"] == 4 * int(ref["context_tokens"].sum())
    np.testing.assert_allclose(peer[LL].to_numpy(), ref[LL].to_numpy(), atol=1e-5, rtol=0)
    assert list(peer["pred"]) == list(ref["pred"]) and list(peer["id"]) == list(ref["id"])
    assert list(peer.columns) == list(ref.columns)


def test_harness_encode_pair_moves_trailing_space(tok):
    ctx, cont = harness_encode_pair(tok, "Answer: ", "A")
    ctx2, cont2 = harness_encode_pair(tok, "Answer:", " A")
    assert (ctx, cont) == (ctx2, cont2) and len(cont) == 1 and ctx[0] == tok.bos_token_id
