"""bert_tf with ``attn_implementation="varlen"``: the unpadded path ("unpad", eager inputs) and the in-graph
segment mask ("segments", inside tf.function / XLA, or with output_attentions) against the padded eager
path, on every head, for absolute, relative and decoder configs; packed rows (HF position-id restarts)
against each sequence run alone; gradients through the gathers and scatters."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import bert_tf  # noqa: E402
from bert_common import varlen  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.weights import MODEL_CLASSES  # noqa: E402

HEADS = list(MODEL_CLASSES)
VARIANTS = ("absolute", "relative_key", "relative_key_query", "decoder")
# fp32 on the tiny config: the largest difference seen is ~2e-6 (reordered sums in the block layout).
ATOL = 1e-5
# Float outputs compared: token-level (B, S, ...) on kept tokens, row-level (B, ...) where column 0 is kept
# (the pooler reads column 0 in both paths; a dropped column 0 holds 0 under varlen, a pad token's state
# in the padded path).
FIELDS = ("last_hidden_state", "pooler_output", "logits", "prediction_logits", "seq_relationship_logits",
          "start_logits", "end_logits")


def _config(variant, impl, **kw):
    extra = {"num_labels": 2} if kw.pop("qa", False) else {}
    return tiny_config(variant, attn_implementation=impl, **extra, **kw)


def _pair(model_class, variant, **kw):
    """(padded eager model, varlen model) of ``model_class`` with the same random weights."""
    qa = model_class == "BertForQuestionAnswering"
    ref_cfg, var_cfg = _config(variant, "eager", qa=qa, **kw), _config(variant, "varlen", qa=qa, **kw)
    state = random_weights(ref_cfg, model_class, seed=3)
    return bert_tf.build(model_class, ref_cfg, state), bert_tf.build(model_class, var_cfg, state)


def _mask(lengths, S, left=False):
    """(B, S) 0/1 mask with the given row lengths, right- or left-padded."""
    m = np.zeros((len(lengths), S), np.int64)
    for b, n in enumerate(lengths):
        if left:
            m[b, S - n:] = 1
        else:
            m[b, :n] = 1
    return m


def _inputs(cfg, model_class, left=None):
    """A (5, 7) batch (multiple choice: (5, 3, 7)) of rows of 7, 4 and 1 tokens, right- and left-padded
    (``left`` None: both in one batch; True / False: three rows padded on that side)."""
    S = 7
    if left is None:
        mask = np.concatenate([_mask([S, 4, 1], S), _mask([4, 1], S, left=True)])
    else:
        mask = _mask([S, 4, 1], S, left)
    if model_class == "BertForMultipleChoice":
        mask = np.repeat(mask[:, None], 3, axis=1)
    inp = random_inputs(cfg, model_class, batch=len(mask), seq=S, seed=4)
    inp["attention_mask"] = mask
    inp["input_ids"] = np.where(mask == 1, inp["input_ids"], 0)
    for k in ("labels",):
        if k in inp and inp[k].shape == mask.shape:
            inp[k] = np.where(mask == 1, inp[k], -100)
    return inp


def _compare(ref, got, mask, fields=FIELDS, atol=ATOL):
    """Max |ref - got| over the fields on kept tokens / rows with column 0 kept; asserts <= atol."""
    worst = 0.0
    for name in fields:
        r, g = ref.get(name), got.get(name)
        if r is None:
            assert g is None, name
            continue
        r, g = np.asarray(r), np.asarray(g)
        assert r.shape == g.shape, name
        keep = mask != 0 if r.shape[:mask.ndim] == mask.shape else mask[..., 0] != 0
        keep = keep.reshape(keep.shape + (1,) * (r.ndim - keep.ndim))
        diff = float(np.abs(np.where(keep, r - g, 0)).max())
        assert diff <= atol, (name, diff)
        worst = max(worst, diff)
    return worst


def _kept_loss(out, mask, weights):
    """A loss reading only the values varlen must reproduce (kept tokens, rows with column 0 kept)."""
    total = 0.0
    for name in FIELDS:
        x = out.get(name)
        if x is None:
            continue
        keep = mask != 0 if tuple(x.shape[:mask.ndim]) == mask.shape else mask[..., 0] != 0
        keep = keep.reshape(keep.shape + (1,) * (len(x.shape) - keep.ndim)).astype(np.float32)
        w = weights.setdefault(name, np.random.default_rng(len(name)).standard_normal(x.shape).astype(np.float32))
        total += tf.reduce_sum(x * w * keep)
    return total


def _assert_grads_close(got, want, variables):
    for a, b, v in zip(want, got, variables):
        if a is None:  # position embeddings of a relative model
            assert b is None, v.path
        else:
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-4, err_msg=v.path)


def _grads(model, inp, mask, weights):
    with tf.GradientTape() as tape:
        out = model(**inp, training=True)
        loss = _kept_loss(out, mask, weights)
    variables = model.trainable_variables
    return [None if g is None else np.asarray(g) for g in tape.gradient(loss, variables)], out


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_class", HEADS)
def test_unpad_equals_padded_on_kept_tokens_with_gradients(model_class, variant):
    """Every head x position type / decoder (one layer, for time), rows of 7, 4 and 1 tokens right- and
    left-padded in one batch; gradients of the weights for one variant per head (cycling: each variant
    is covered at least twice)."""
    ref, var = _pair(model_class, variant, num_hidden_layers=1)
    inp = {k: v for k, v in _inputs(ref.config, model_class).items()
           if k in ("input_ids", "attention_mask", "token_type_ids")}
    mask = inp["attention_mask"]
    if VARIANTS[HEADS.index(model_class) % len(VARIANTS)] != variant:
        _compare(ref(**inp), var(**inp), mask)
        return
    weights = {}
    g_ref, out_ref = _grads(ref, inp, mask, weights)
    g_var, out_var = _grads(var, inp, mask, weights)
    _compare(out_ref, out_var, mask)
    _assert_grads_close(g_var, g_ref, var.trainable_variables)


def test_own_loss_and_hidden_states_head_mask_inputs_embeds():
    """MLM loss (labels -100 at dropped tokens) and its gradients; every hidden_states entry; head_mask
    (explicit probabilities in the blocks); inputs_embeds gathered in-graph with a gradient."""
    ref, var = _pair("BertForMaskedLM", "relative_key_query")
    inp = _inputs(ref.config, "BertForMaskedLM", left=True)
    mask = inp["attention_mask"]
    losses, grads = [], []
    for model in (ref, var):
        with tf.GradientTape() as tape:
            out = model(**inp, output_hidden_states=True, training=True)
        losses.append(float(out.loss))
        grads.append(tape.gradient(out.loss, model.trainable_variables))
        if model is var:
            for r, g in zip(ref_hidden, out.hidden_states):
                _compare({"h": r}, {"h": g}, mask, fields=("h",))
                assert (np.asarray(g)[mask == 0] == 0).all()
        ref_hidden = out.hidden_states
    assert abs(losses[0] - losses[1]) < 1e-5
    _assert_grads_close(grads[1], grads[0], var.trainable_variables)

    head_mask = np.array([[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.25]], np.float32)
    base_ref, base_var = ref.bert, var.bert
    _compare(base_ref(input_ids=inp["input_ids"], attention_mask=mask, head_mask=head_mask),
             base_var(input_ids=inp["input_ids"], attention_mask=mask, head_mask=head_mask), mask)

    embeds = tf.constant(np.random.default_rng(5).standard_normal((3, 7, 32)).astype(np.float32))
    gs = []
    for model in (base_ref, base_var):
        with tf.GradientTape() as tape:
            tape.watch(embeds)
            h = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            loss = tf.reduce_sum(h * mask[..., None] * np.linspace(-1, 1, 32, dtype=np.float32))
        gs.append(np.asarray(tape.gradient(loss, embeds)))
    np.testing.assert_allclose(gs[1], gs[0], atol=1e-5)
    assert (gs[1][mask == 0] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_row_equals_each_sequence_alone(variant):
    """Three sequences in one row, position ids restarting at 0 (HF DataCollatorWithFlattening), equal
    each sequence run alone through the padded path, in unpad and segments mode (probabilities 0 across
    sequences)."""
    ref, var = _pair("BertModel", variant)
    rng = np.random.default_rng(6)
    seqs = [rng.integers(1, 99, n).tolist() for n in (5, 1, 7)]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in (5, 1, 7)]
    packed = varlen.pack(seqs, token_type_ids=types)
    inp = {k: packed[k] for k in ("input_ids", "position_ids", "attention_mask", "token_type_ids")}
    got = np.asarray(var(**inp).last_hidden_state)[0]                                 # (13, H)
    seg = var(**inp, output_attentions=True)
    np.testing.assert_allclose(np.asarray(seg.last_hidden_state)[0], got, atol=ATOL)
    cu = varlen.cu_seqlens_from_position_ids(packed["position_ids"])
    for i, s in enumerate(seqs):
        alone = np.asarray(ref(input_ids=np.array([s]), token_type_ids=np.array([types[i]])).last_hidden_state)[0]
        np.testing.assert_allclose(got[cu[i]:cu[i + 1]], alone, atol=ATOL)
    ids = varlen.segment_ids(None, packed["position_ids"], packed["input_ids"].shape)[0]
    across = ids[:, None] != ids[None, :]
    for probs in seg.attentions:
        assert (np.asarray(probs)[0][:, across] == 0).all()
        np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)


def test_packed_row_longer_than_max_positions():
    """A packed row of 100 tokens on a model with max_position_embeddings=64: allowed with position ids
    (unpad, and segments under ``checked_xla``: relative indices are clipped there), refused without."""
    ref, var = _pair("BertModel", "relative_key_query")
    rng = np.random.default_rng(7)
    seqs = [rng.integers(1, 99, n).tolist() for n in (40, 35, 25)]
    packed = varlen.pack(seqs)
    inp = {k: packed[k] for k in ("input_ids", "position_ids")}
    assert inp["input_ids"].shape[1] > var.config.max_position_embeddings
    got = np.asarray(var(**inp).last_hidden_state)[0]
    cu = varlen.cu_seqlens_from_position_ids(packed["position_ids"])
    for i, s in enumerate(seqs):
        alone = np.asarray(ref(input_ids=np.array([s])).last_hidden_state)[0]
        np.testing.assert_allclose(got[cu[i]:cu[i + 1]], alone, atol=ATOL)
    xla = var.checked_xla()
    np.testing.assert_allclose(np.asarray(xla(**inp).last_hidden_state)[0], got, atol=ATOL)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        var(input_ids=inp["input_ids"])


@pytest.mark.slow
def test_segments_in_graph_and_xla_equal_unpad():
    """Inside tf.function (graph and jit_compile) varlen runs the in-graph segment mask; it equals the
    unpad path everywhere (0 at dropped tokens), for padded batches with packed rows (a relative-position
    decoder); gradients in graph mode too."""
    _, var = _pair("BertForTokenClassification", "decoder", position_embedding_type="relative_key")
    pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
    mask = np.array([[1] * 8, [1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]])
    ids = np.where(mask == 1, np.random.default_rng(8).integers(1, 99, mask.shape), 0)
    inp = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    eager = var(**inp, output_hidden_states=True)
    tensors = {k: tf.constant(v) for k, v in inp.items()}
    for jit in (False, True):
        fn = tf.function(lambda x: var(**x, output_hidden_states=True), jit_compile=jit)
        out = fn(tensors)
        np.testing.assert_allclose(np.asarray(out.logits), np.asarray(eager.logits), atol=ATOL)
        for a, b in zip(out.hidden_states, eager.hidden_states):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL)
    weights = {}
    g_unpad, _ = _grads(var, inp, mask, weights)

    @tf.function
    def graph_grads(x):
        with tf.GradientTape() as tape:
            loss = _kept_loss(var(**x, training=True), mask, weights)
        return tape.gradient(loss, var.trainable_variables)

    _assert_grads_close(graph_grads(tensors), g_unpad, var.trainable_variables)


def test_segment_ids_in_graph_equal_numpy_rule():
    from bert_tf._varlen import segment_ids
    rng = np.random.default_rng(9)
    mask = (rng.random((5, 11)) < 0.8).astype(np.int64)
    pos = rng.integers(0, 3, (5, 11))
    for p in (None, pos, pos[:1]):
        got = segment_ids(tf.constant(mask), None if p is None else tf.constant(p), 5, 11)
        np.testing.assert_array_equal(np.asarray(got), varlen.segment_ids(mask, p, (5, 11)))
    np.testing.assert_array_equal(np.asarray(segment_ids(None, tf.constant(pos), 5, 11)),
                                  varlen.segment_ids(None, pos, (5, 11)))


def test_decoder_cache_fields_and_refusals():
    """A decoder's cache comes back in the padded layout (B, N, S, D) equal to the padded path's on kept
    tokens; a cache or encoder states as input are refused with varlen, naming the argument."""
    ref, var = _pair("BertLMHeadModel", "decoder")
    mask = _mask([6, 3], 6)
    ids = np.where(mask == 1, np.arange(1, 13).reshape(2, 6), 0)
    r, v = ref(input_ids=ids, attention_mask=mask, use_cache=True), var(input_ids=ids, attention_mask=mask,
                                                                         use_cache=True)
    keep = (mask == 1)[:, None, :, None]
    for lr, lv in zip(r.past_key_values, v.past_key_values):
        for a, b in zip(lr, lv):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.where(keep, np.asarray(b), 0), np.where(keep, np.asarray(a), 0), atol=ATOL)
    with pytest.raises(ValueError, match="past_key_values cannot be used with attn_implementation='varlen'"):
        var(input_ids=ids[:, :1], attention_mask=np.ones((2, 7), np.int64), past_key_values=r.past_key_values)
    cross = bert_tf.BertModel(tiny_config("cross_attention", attn_implementation="varlen"))
    with pytest.raises(ValueError, match="encoder_hidden_states cannot be used with attn_implementation='varlen'"):
        cross(input_ids=ids, encoder_hidden_states=np.zeros((2, 3, 32), np.float32))
    with pytest.raises(ValueError, match="past_key_values cannot be used"):
        tf.function(lambda: var(input_ids=tf.constant(ids[:, :1]), past_key_values=r.past_key_values))()


def test_gradient_checkpointing_takes_the_blocks():
    """Recomputed layers (tf.recompute_grad) run on the packed tokens with the blocks they were given."""
    ref, var = _pair("BertForSequenceClassification", "absolute", gradient_checkpointing=True)
    inp = {k: v for k, v in _inputs(ref.config, "BertForSequenceClassification", False).items()
           if k in ("input_ids", "attention_mask", "token_type_ids")}
    weights = {}
    _assert_grads_close(_grads(var, inp, inp["attention_mask"], weights)[0],
                        _grads(ref, inp, inp["attention_mask"], weights)[0], var.trainable_variables)
