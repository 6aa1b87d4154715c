"""The framework-free half of unpadded execution (bert_common.varlen): plans, segments, packing.

The backends' varlen forwards are checked against their padded forwards in the conformance suite; here
the plan itself is checked against the rule it states, including a NumPy attention that must equal
per-sequence attention computed one sequence at a time.
"""
import numpy as np
import pytest

from bert_common import varlen


def _random_batch(rng, B=4, S=9, left=False):
    lengths = rng.integers(1, S + 1, size=B)
    mask = np.zeros((B, S), np.int64)
    for b, n in enumerate(lengths):
        if left:
            mask[b, S - n:] = 1
        else:
            mask[b, :n] = 1
    return mask


def test_plan_lists_kept_tokens_in_row_major_order_and_scatters_back():
    rng = np.random.default_rng(0)
    mask = _random_batch(rng)
    B, S = mask.shape
    plan = varlen.make_plan(mask, None, (B, S))
    assert plan.num_tokens == int(mask.sum()) == len(plan.token_index)
    assert plan.num_sequences == B
    np.testing.assert_array_equal(plan.token_index, np.flatnonzero(mask.ravel()))
    x = rng.normal(size=(B, S, 3)).astype(np.float32)
    back = plan.scatter(plan.take(x))
    np.testing.assert_array_equal(back, x * mask[:, :, None])
    np.testing.assert_array_equal(plan.cu_seqlens, np.concatenate([[0], np.cumsum(mask.sum(1))]))


def test_blocks_hold_each_sequence_in_order():
    rng = np.random.default_rng(1)
    mask = _random_batch(rng, left=True)
    plan = varlen.make_plan(mask, None, mask.shape)
    T, G, L = plan.shape
    assert (G, L) == (mask.shape[0], int(mask.sum(1).max()))
    for g in range(G):
        n = int(plan.valid[g].sum())
        assert plan.valid[g, :n].all() and not plan.valid[g, n:].any()
        np.testing.assert_array_equal(plan.gather[g, :n], np.arange(plan.cu_seqlens[g], plan.cu_seqlens[g + 1]))
    # slot is the inverse of gather on valid slots
    np.testing.assert_array_equal(plan.gather.ravel()[plan.slot], np.arange(T))


def test_position_id_restarts_split_a_row_and_segment_ids_agree():
    pos = np.array([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 0, 0, 0]])
    mask = np.array([[1] * 9, [1, 1, 1, 1, 1, 1, 1, 0, 0]])
    seg = varlen.segment_ids(mask, pos, pos.shape)
    np.testing.assert_array_equal(seg, [[1, 1, 1, 2, 2, 3, 3, 3, 3], [1, 1, 2, 2, 2, 2, 3, 0, 0]])
    plan = varlen.make_plan(mask, pos, pos.shape)
    np.testing.assert_array_equal(np.diff(plan.cu_seqlens), [3, 2, 4, 2, 4, 1])
    np.testing.assert_array_equal(varlen.cu_seqlens_from_position_ids(pos, mask), plan.cu_seqlens)


def test_bucketing_adds_dummies_that_never_reach_the_output():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    plan = varlen.make_plan(mask, None, mask.shape, token_multiple=16, length_multiple=8, block_multiple=4)
    T, G, L = plan.shape
    assert (T, L) == (16, 8) and G % 4 == 0 and plan.num_tokens == 4
    assert (plan.token_index[4:] == mask.size).all()  # the discarded row
    x = np.arange(T, dtype=np.float32)[:, None]
    out = plan.scatter(x)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 2, 0], [3, 0, 0, 0]])
    # every dummy sits in a block with no real token
    real_blocks = set(plan.slot[:4] // L)
    assert not real_blocks & set(plan.slot[4:] // L)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("causal", [False, True])
def test_block_attention_equals_attention_per_sequence(causal):
    """NumPy attention over the plan's blocks (block_allowed + relative index) equals each sequence
    attended on its own at its own columns: the rule the backends implement."""
    rng = np.random.default_rng(2)
    pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]])
    M, D = 16, 4
    plan = varlen.make_plan(mask, pos, pos.shape, token_multiple=8, length_multiple=4)
    T, G, L = plan.shape
    q, k = rng.normal(size=(2, T, D))
    v = rng.normal(size=(T, D))
    table = rng.normal(size=(2 * M - 1,))
    allowed = varlen.block_allowed(plan, causal)
    rel = table[varlen.block_relative_index(plan, M)]                                   # G,L,L
    qb, kb, vb = q[plan.gather], k[plan.gather], v[plan.gather]                          # G,L,D
    scores = np.einsum("gid,gjd->gij", qb, kb) + rel
    scores = np.where(np.broadcast_to(allowed, scores.shape), scores, -1e30)
    out = np.einsum("gij,gjd->gid", _softmax(scores), vb).reshape(G * L, D)[plan.slot]   # T,D
    for s in range(plan.num_sequences):
        a, b = plan.cu_seqlens[s], plan.cu_seqlens[s + 1]
        cols = plan.columns[a:b]
        sc = q[a:b] @ k[a:b].T + table[cols[:, None] - cols[None, :] + M - 1]
        if causal:
            sc = np.where(cols[None, :] <= cols[:, None], sc, -1e30)
        np.testing.assert_allclose(out[a:b], _softmax(sc) @ v[a:b], rtol=1e-12, atol=1e-12)


def test_pack_and_cu_seqlens_round_trip():
    seqs = [[5, 6, 7], [8], [9, 10]]
    out = varlen.pack(seqs)
    np.testing.assert_array_equal(out["input_ids"], [[5, 6, 7, 8, 9, 10]])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 0, 0, 1]])
    np.testing.assert_array_equal(varlen.position_ids_from_cu_seqlens([0, 3, 4, 6]), out["position_ids"])
    rows = varlen.pack(seqs, row_tokens=4, pad_token_id=0)
    np.testing.assert_array_equal(rows["input_ids"], [[5, 6, 7, 8], [9, 10, 0, 0]])
    np.testing.assert_array_equal(rows["attention_mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["sequence_rows"], [0, 0, 1])
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        varlen.pack([[1], []])
    with pytest.raises(ValueError, match=r"sequences\[0\] has 3 tokens, more than row_tokens=2"):
        varlen.pack([[1, 2, 3]], row_tokens=2)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen.position_ids_from_cu_seqlens([0, 3, 3])


def test_varlen_mode_table():
    from bert_common import semantics
    from bert_common.config import BertConfig
    c = BertConfig(attn_implementation="varlen")
    assert semantics.varlen_mode(c, concrete=True, output_attentions=False) == "unpad"
    assert semantics.varlen_mode(c, concrete=False, output_attentions=False) == "segments"
    assert semantics.varlen_mode(c, concrete=True, output_attentions=True) == "segments"
    assert semantics.varlen_mode(BertConfig(), concrete=True, output_attentions=False) is None
    with pytest.raises(ValueError, match="past_key_values cannot be used with attn_implementation='varlen'"):
        semantics.varlen_mode(c, True, False, {"past_key_values": ((1, 2),)})
    assert semantics.attention_path(c, "torch", True, False) == (True, None)
    assert semantics.attention_path(c, "torch", False, False) == (False, None)


def test_shared_relative_index_equals_every_block_on_real_pairs():
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]])  # right, left padding, a hole
    M = 8
    contiguous = varlen.make_plan(mask[:2], None, (2, 4))
    shared = varlen.block_relative_index(contiguous, M, shared=True)
    full = varlen.block_relative_index(contiguous, M)
    assert shared.shape == (3, 3) and full.shape == (2, 3, 3)
    pairs = contiguous.valid[:, :, None] & contiguous.valid[:, None, :]
    np.testing.assert_array_equal(np.broadcast_to(shared, full.shape)[pairs], full[pairs])
    holed = varlen.make_plan(mask, None, mask.shape)  # row 2's columns 0, 2, 3 are not consecutive
    assert varlen.block_relative_index(holed, M, shared=True).shape == (3, 3, 3)
