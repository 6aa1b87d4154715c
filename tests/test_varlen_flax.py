"""bert_flax with attn_implementation="varlen" (bert_common.varlen's rule): the unpad mode (plan made on
the host, bucketed, encoder jitted on packed tokens) and the segments mode (a user's jax.jit, or
output_attentions) equal the padded eager path on kept tokens, for every head, forward and gradients;
packed rows equal their sequences run alone; the packed encoder compiles once per bucketed plan shape."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from bert_common import varlen  # noqa: E402
from bert_common.semantics import MODEL_CLASSES  # noqa: E402
from bert_common.testing import random_weights, tiny_config  # noqa: E402
from bert_flax import _varlen  # noqa: E402
from bert_flax.modeling import build  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # CPU compile several times faster, same fp32 ops
ATOL = 2e-5  # fp32 on the tiny config; the differences seen are <= 4e-6 (summation order of the blocks)
POOLED = ("BertForPreTraining", "BertForNextSentencePrediction", "BertForSequenceClassification",
          "BertForMultipleChoice")
# Each head runs under one position type (all four types covered; BertModel runs under all of them).
HEAD_VARIANTS = [("BertModel", v) for v in ("relative_key", "relative_key_query", "decoder")] + [
    ("BertForPreTraining", "relative_key"), ("BertLMHeadModel", "decoder"), ("BertForMaskedLM", "absolute"),
    ("BertForNextSentencePrediction", "relative_key_query"), ("BertForSequenceClassification", "absolute"),
    ("BertForMultipleChoice", "relative_key"), ("BertForTokenClassification", "relative_key_query"),
    ("BertForQuestionAnswering", "absolute")]


def _pair(variant, model_class, **overrides):
    """(padded eager model, varlen model) with the same canonical weights."""
    config = tiny_config(variant, **overrides)
    weights = random_weights(config, model_class, seed=3)
    padded = build(model_class, tiny_config(variant, attn_implementation="eager", **overrides), weights,
                   compiler_options=FAST_COMPILE)
    return padded, build(model_class, tiny_config(variant, attn_implementation="varlen", **overrides), weights,
                         compiler_options=FAST_COMPILE)


def _batch(model_class, left, seed=0, B=3, S=9, C=2):
    """Rows of lengths S, 4, 1 (right or left padded); labels only where the padded loss equals the
    unpadded one (-100 at dropped tokens)."""
    rng = np.random.default_rng(seed)
    lead = (B, C) if model_class == "BertForMultipleChoice" else (B,)
    mask = np.zeros((B, S), np.int64)
    for b, n in enumerate([S, 4, 1][:B]):
        if left:
            mask[b, S - n:] = 1
        else:
            mask[b, :n] = 1
    mask = np.broadcast_to(mask[:, None], lead + (S,)).copy() if len(lead) == 2 else mask
    ids = np.where(mask == 1, rng.integers(1, 99, lead + (S,)), 0)
    types = (np.arange(S) >= S // 2).astype(np.int64) * mask
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    token_labels = np.where(mask.reshape(B, -1, S)[:, 0] == 1, rng.integers(0, 3, (B, S)), -100)
    if model_class == "BertLMHeadModel":  # a row's first token is predicted from the column before it,
        token_labels[np.arange(B), mask.argmax(1)] = -100  # a dropped token when left-padded
    labels = {"BertForMaskedLM": {"labels": token_labels}, "BertLMHeadModel": {"labels": token_labels},
              "BertForPreTraining": {"labels": token_labels, "next_sentence_label": rng.integers(0, 2, B)},
              "BertForNextSentencePrediction": {"labels": rng.integers(0, 2, B)},
              "BertForSequenceClassification": {"labels": rng.integers(0, 3, B)},
              "BertForMultipleChoice": {"labels": rng.integers(0, C, B)},
              "BertForTokenClassification": {"labels": token_labels}}
    return out, labels.get(model_class, {})


def _kept_outputs(out, mask, model_class, left):
    """The output arrays that the rule covers: token fields at kept tokens, pooled fields whole (right
    padding only: the pooler reads column 0, a dropped token of a left-padded row, as the padded path)."""
    kept = np.asarray(mask).astype(bool)
    res = {}
    for k, v in out.items():
        if k in ("loss", "past_key_values", "attentions") or (left and k == "pooler_output"):
            continue
        if k == "hidden_states":
            rows = kept.reshape(-1, kept.shape[-1])  # multiple choice: the encoder's (B * C, S)
            res.update({f"hidden_states.{i}": np.asarray(h)[rows] for i, h in enumerate(v)})
        elif k in ("pooler_output", "seq_relationship_logits") or (
                k == "logits" and model_class in POOLED):
            res[k] = np.asarray(v)
        else:
            res[k] = np.asarray(v)[kept.reshape(np.shape(v)[:kept.ndim])]
    return res


def _assert_close(a, b, atol=ATOL):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("model_class,variant", HEAD_VARIANTS)
def test_unpad_equals_padded_on_kept_tokens_forward_and_gradients(model_class, variant):
    padded, model = _pair(variant, model_class, **({"num_labels": 2} if model_class == "BertForQuestionAnswering"
                                                   else {}))
    sides = (False,) if model_class in POOLED else (False, True)  # the pooler reads column 0, as padded
    for left in sides:
        inputs, labels = _batch(model_class, left)
        want = padded(**inputs, **labels, output_hidden_states=True)
        got = model(**inputs, **labels, output_hidden_states=True)
        _assert_close(_kept_outputs(want, inputs["attention_mask"], model_class, left),
                      _kept_outputs(got, inputs["attention_mask"], model_class, left))
        if labels:
            np.testing.assert_allclose(float(got.loss), float(want.loss), rtol=1e-5)
    assert model._unpad.trace_count >= 1  # the packed encoder ran (unpad, not segments)

    # Gradients w.r.t. params through gather / blocks / scatter: params traced, inputs concrete, so still
    # the unpad mode (jitted here only to compile fast; test_plain_jax_grad runs jax.grad bare). The heads
    # cover every position type, so BertModel's rows skip this (CPU time).
    if model_class == "BertModel":
        return
    traces = model._unpad.trace_count
    _assert_same_gradients(*(jax.jit(jax.grad(_loss(m, model_class, *_batch(model_class, False, seed=1))),
                                     compiler_options=FAST_COMPILE)(m.params) for m in (padded, model)))
    assert model._unpad.trace_count == traces + 1


def _loss(model, model_class, inputs, labels):
    """params -> the head's own loss, or a kept-token loss (QA: its CE spans dropped tokens; BertModel)."""
    kept = jnp.asarray(inputs["attention_mask"], jnp.float32)

    def f(p):
        out = model(**inputs, **labels, params=p)
        if labels:
            return out.loss
        first = out[0] if model_class != "BertModel" else out.last_hidden_state.sum(-1)
        return ((first * kept) ** 2).sum()
    return f


def _assert_same_gradients(want, got):
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(got)[0]:
        scale = max(1.0, float(np.abs(flat_want[path]).max()))
        np.testing.assert_allclose(np.asarray(g), np.asarray(flat_want[path]), rtol=0, atol=2e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def test_plain_jax_grad_with_concrete_inputs_runs_unpad():
    """``jax.grad(lambda p: model(..., params=p).loss)``: params are traced, the inputs are not, so the
    plan is still made on the host and the packed encoder is differentiated."""
    padded, model = _pair("absolute", "BertForMaskedLM")
    batch = _batch("BertForMaskedLM", left=True, seed=2)
    want = jax.jit(jax.grad(_loss(padded, "BertForMaskedLM", *batch)), compiler_options=FAST_COMPILE)(padded.params)
    got = jax.grad(_loss(model, "BertForMaskedLM", *batch))(model.params)
    assert model._unpad.trace_count == 1 and model.trace_count == 1  # encoder + scatter/head, both once
    _assert_same_gradients(want, got)


def test_every_head_class_is_covered():
    assert {m for m, _ in HEAD_VARIANTS} == set(MODEL_CLASSES)
    assert {v for _, v in HEAD_VARIANTS} == {"absolute", "relative_key", "relative_key_query", "decoder"}


def _alone(padded, seqs, types=None):
    """Each sequence run on its own by the padded path: one right-padded batch of them -> list of (n, ...)."""
    S = max(map(len, seqs))
    ids, mask, tt = (np.zeros((len(seqs), S), np.int64) for _ in range(3))
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
        if types is not None:
            tt[i, :len(s)] = types[i]
    return [np.asarray(padded(ids, attention_mask=mask, token_type_ids=tt)[0])[i, :len(s)]
            for i, s in enumerate(seqs)]


@pytest.mark.parametrize("variant", ["absolute", "relative_key_query", "decoder"])
def test_packed_row_equals_each_sequence_alone_even_longer_than_max_positions(variant):
    padded, model = _pair(variant, "BertModel")
    rng = np.random.default_rng(4)
    seqs = [list(rng.integers(1, 99, n)) for n in (30, 1, 25, 20)]  # 76 tokens in one row, more than M = 64
    p = varlen.pack(seqs)
    assert p["input_ids"].shape == (1, 76) and model.config.max_position_embeddings == 64
    got = model(p["input_ids"], position_ids=p["position_ids"]).last_hidden_state
    seg = jax.jit(lambda ids, pos: model.apply(model.params, input_ids=ids, position_ids=pos)
                  ["last_hidden_state"])(p["input_ids"], p["position_ids"])
    for s, start, alone in zip(seqs, p["sequence_starts"], _alone(padded, seqs)):
        np.testing.assert_allclose(np.asarray(got)[0, start:start + len(s)], alone, rtol=0, atol=ATOL)
        np.testing.assert_allclose(np.asarray(seg)[0, start:start + len(s)], alone, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):  # without restarts: one sequence
        model(p["input_ids"])


def test_packed_rows_with_padding_and_token_types_hf_flattening_convention():
    """pack(row_tokens=...) rows (several sequences per row, padded tail) == each sequence alone."""
    padded, model = _pair("relative_key", "BertForTokenClassification")
    rng = np.random.default_rng(5)
    seqs = [list(rng.integers(1, 99, n)) for n in (4, 3, 6, 2, 5)]
    types = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs]
    p = varlen.pack(seqs, token_type_ids=types, row_tokens=9)
    got = model(p["input_ids"], attention_mask=p["attention_mask"], token_type_ids=p["token_type_ids"],
                position_ids=p["position_ids"]).logits
    for i, (s, alone) in enumerate(zip(seqs, _alone(padded, seqs, types))):
        r, a = p["sequence_rows"][i], p["sequence_starts"][i]
        np.testing.assert_allclose(np.asarray(got)[r, a:a + len(s)], alone, rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["relative_key_query", "decoder"])
def test_segments_mode_equals_unpad_and_confines_attention(variant):
    _, model = _pair(variant, "BertModel")
    pos = np.array([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 0, 0, 0]])
    mask = np.array([[1] * 9, [1, 1, 1, 1, 1, 1, 1, 0, 0]])
    ids = np.where(mask == 1, np.random.default_rng(6).integers(1, 99, mask.shape), 0)
    traces = model._unpad.trace_count
    unpad = model(ids, attention_mask=mask, position_ids=pos)
    assert model._unpad.trace_count == traces + 1
    with_probs = model(ids, attention_mask=mask, position_ids=pos, output_attentions=True)  # -> segments
    assert model._unpad.trace_count == traces + 1
    jitted = jax.jit(lambda i, m, p: model.apply(model.params, input_ids=i, attention_mask=m, position_ids=p))(
        ids, mask, pos)
    kept = mask.astype(bool)
    for other in (with_probs.last_hidden_state, jitted["last_hidden_state"]):
        np.testing.assert_allclose(np.asarray(other)[kept], np.asarray(unpad.last_hidden_state)[kept], atol=ATOL)
    np.testing.assert_array_equal(np.asarray(unpad.last_hidden_state)[~kept], 0)
    seg = varlen.segment_ids(mask, pos, mask.shape)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)                     # (B, S, S)
    if model.config.is_decoder:
        same &= np.tril(np.ones((9, 9), bool))
    for probs in with_probs.attentions:                                                      # (B, N, S, S)
        p = np.asarray(probs)
        assert p.shape == (2, 4, 9, 9)
        assert (p[np.broadcast_to(~same[:, None], p.shape) & kept[:, None, :, None]] == 0).all()
        np.testing.assert_allclose(p.sum(-1)[np.broadcast_to(kept[:, None], p.shape[:3])], 1, atol=1e-6)


def test_head_mask_and_dropout_in_unpad_mode():
    padded, model = _pair("relative_key", "BertForMaskedLM", hidden_dropout_prob=0.1)
    inputs, labels = _batch("BertForMaskedLM", left=True)
    hm = np.array([[1, 0, 1, 0.5], [0, 1, 1, 1]], np.float32)
    kept = inputs["attention_mask"].astype(bool)
    want, got = padded(**inputs, head_mask=hm).logits, model(**inputs, head_mask=hm).logits
    np.testing.assert_allclose(np.asarray(got)[kept], np.asarray(want)[kept], atol=ATOL)
    with pytest.raises(ValueError, match="train=True needs dropout_rng"):
        model(**inputs, train=True)
    a = model(**inputs, train=True, dropout_rng=jax.random.PRNGKey(0)).logits
    b = model(**inputs, train=True, dropout_rng=jax.random.PRNGKey(1)).logits
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(np.asarray(a)[kept], np.asarray(b)[kept])


def test_a_new_batch_shape_with_the_same_bucketed_plan_does_not_recompile_the_encoder():
    _, model = _pair("absolute", "BertModel")
    rng = np.random.default_rng(7)
    first = np.zeros((2, 8), np.int64)
    first[0, :5] = first[1, :3] = 1
    second = np.zeros((3, 5), np.int64)
    second[0, :5] = second[1, :2] = second[2, :1] = 1
    plans = [_varlen.bucketed_plan(m, None, m.shape) for m in (first, second)]
    assert plans[0].shape == plans[1].shape == (64, 16, 8)
    for mask in (first, second, first[:, :6]):
        model(np.where(mask == 1, rng.integers(1, 99, mask.shape), 0), attention_mask=mask)
    assert model._unpad.trace_count == 1  # the encoder: once for the three (B, S)
    longer = np.ones((2, 12), np.int64)  # L = 12 -> 16: a new plan shape, one more compile
    model(rng.integers(1, 99, longer.shape), attention_mask=longer)
    assert model._unpad.trace_count == 2


def test_bucket_multiples():
    # T: multiples of 64 below 1024, then 1/8 of the power of two below; L and G: 8 below 32, then 1/2.
    assert [_varlen._multiple(n, *_varlen.BUCKETS["token"]) for n in (1, 64, 511, 512, 1000, 4096)] == [
        64, 64, 64, 64, 64, 512]
    assert [_varlen._multiple(n, *_varlen.BUCKETS["length"]) for n in (1, 31, 32, 64, 200)] == [8, 8, 16, 32, 64]
    mask = (np.arange(300)[None] < np.array([[300], [17]])).astype(np.int64)
    T, G, L = _varlen.bucketed_plan(mask, None, mask.shape).shape
    assert (T, G, L) == (320, 8, 384)


def test_varlen_refuses_a_cache_and_encoder_states():
    _, model = _pair("cross_attention", "BertLMHeadModel")
    ids = np.ones((1, 4), np.int64)
    past = model(ids, attention_mask=np.ones((1, 4)), use_cache=True).past_key_values
    assert np.shape(past[0][0]) == (1, 4, 4, 8)  # the unpad cache comes back in the padded layout
    with pytest.raises(ValueError, match="past_key_values cannot be used with attn_implementation='varlen'"):
        model(ids, past_key_values=past)
    with pytest.raises(ValueError, match="encoder_hidden_states cannot be used with attn_implementation='varlen'"):
        model(ids, encoder_hidden_states=np.zeros((1, 3, 32), np.float32))
    with pytest.raises(ValueError, match="past_key_values cannot be used"):
        model.apply(model.params, input_ids=ids, past_key_values=past)


def test_unpad_cache_equals_the_padded_cache_on_kept_tokens():
    padded, model = _pair("decoder", "BertLMHeadModel")
    inputs, _ = _batch("BertLMHeadModel", left=False)
    want = padded(**inputs, use_cache=True).past_key_values
    got = model(**inputs, use_cache=True).past_key_values
    kept = inputs["attention_mask"].astype(bool)
    for lw, lg in zip(want, got):
        for tw, tg in zip(lw, lg):  # (B, N, S, D)
            tw, tg = np.asarray(tw).transpose(0, 2, 1, 3), np.asarray(tg).transpose(0, 2, 1, 3)
            np.testing.assert_allclose(tg[kept], tw[kept], atol=ATOL)
            assert (tg[~kept] == 0).all()


def test_gradient_checkpointing_and_inputs_embeds_in_unpad_mode():
    padded, model = _pair("absolute", "BertModel", gradient_checkpointing=True)
    inputs, _ = _batch("BertModel", left=True)
    embeds = np.random.default_rng(8).normal(size=inputs["input_ids"].shape + (32,)).astype(np.float32)
    kw = dict(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    kept = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(model(**kw).last_hidden_state)[kept],
                               np.asarray(padded(**kw).last_hidden_state)[kept], atol=ATOL)
    assert model._unpad.trace_count == 1
