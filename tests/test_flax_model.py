"""bert_flax behaviour without the oracle: params pytree, jit caching, cache protocol, generate, validation
(concrete and under a user's jit), training hooks (grad / optax / dropout rng / remat), dtypes, I/O."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
optax = pytest.importorskip("optax")

from jax.experimental import checkify  # noqa: E402

import bert_flax  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.weights import SCHEMES, canonical_shapes, scheme_path  # noqa: E402
from bert_flax.modeling import _flat, build  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # CPU compile several times faster, same fp32 ops


def _build(variant, model_class, seed=0, config_overrides=None, **kw):
    config = tiny_config(variant, **(config_overrides or {}))
    return build(model_class, config, random_weights(config, model_class, seed=seed),
                 compiler_options=FAST_COMPILE, **kw)


@pytest.fixture(scope="module")
def encoder():
    return _build("absolute", "BertModel")


@pytest.fixture(scope="module")
def decoder():
    return _build("decoder", "BertLMHeadModel")


@pytest.fixture(scope="module")
def cross():
    return _build("cross_attention", "BertLMHeadModel")


# ------------------------------------------------------------------------------------------ structure
def test_public_names_and_flax_aliases():
    for name in ("BertConfig", "BertModel", "BertForPreTraining", "BertLMHeadModel", "BertForMaskedLM",
                 "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
                 "BertForTokenClassification", "BertForQuestionAnswering"):
        assert hasattr(bert_flax, name)
    assert bert_flax.FlaxBertForCausalLM is bert_flax.BertLMHeadModel
    assert bert_flax.FlaxBertForMaskedLM is bert_flax.BertForMaskedLM


@pytest.mark.parametrize("variant,model_class", [("absolute", "BertForPreTraining"),
                                                 ("relative_key", "BertForQuestionAnswering"),
                                                 ("cross_attention", "BertLMHeadModel")])
def test_params_paths_are_the_flax_scheme_and_match_linen_init(variant, model_class):
    config = tiny_config(variant, **({"num_labels": 2} if model_class == "BertForQuestionAnswering" else {}))
    model = bert_flax.MODEL_CLASSES[model_class](config)
    flat = {k: v.shape for k, v in _flat(model.params).items()}
    expected = {}
    for name, shape in canonical_shapes(config, model_class).items():
        path, transpose = scheme_path(name, SCHEMES["flax"])
        expected[path] = tuple(reversed(shape)) if transpose else tuple(shape)
    assert flat == expected
    # Linen's own init (shapes only, nothing allocated) builds the same tree, minus position_embeddings of
    # relative models, which exist in every checkpoint but are never read.
    init = {k: v.shape for k, v in _flat(model.init_params_shapes()).items()}
    unused = {k for k in expected if config.is_relative and "position_embeddings" in k}
    assert init == {k: v for k, v in expected.items() if k not in unused}


def test_fresh_init_matches_bert_common_init_weights():
    from bert_common.weights import init_weights
    config = tiny_config("absolute")
    model = bert_flax.BertForMaskedLM(config, seed=7)
    ref = init_weights(config, "BertForMaskedLM", seed=7)
    got = model.canonical_state_dict()
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


# ------------------------------------------------------------------------------------------ jit caching
def test_second_call_with_same_shapes_does_not_recompile(encoder):
    inputs = random_inputs(encoder.config, "BertModel", labels=False, seed=5)
    before = encoder.trace_count
    a = encoder(**inputs).last_hidden_state
    after_first = encoder.trace_count
    other = dict(inputs, input_ids=(inputs["input_ids"] + 1) % encoder.config.vocab_size)
    b = encoder(**other).last_hidden_state
    assert encoder.trace_count == after_first <= before + 1
    assert not np.allclose(np.asarray(a), np.asarray(b))  # same program, different data
    encoder(**random_inputs(encoder.config, "BertModel", labels=False, seq=5))
    assert encoder.trace_count == after_first + 1         # a new shape compiles once more


# ------------------------------------------------------------------------------------------ cache + generate
def _chunks(model, inputs, cuts):
    """Run the cache protocol over chunks [0:c1], [c1:c2], ...; returns concatenated logits."""
    extra = {k: inputs[k] for k in ("encoder_hidden_states", "encoder_attention_mask") if k in inputs}
    past, logits, start = None, [], 0
    for end in list(cuts) + [inputs["input_ids"].shape[1]]:
        out = model(inputs["input_ids"][:, start:end], attention_mask=inputs["attention_mask"][:, :end],
                    token_type_ids=inputs["token_type_ids"][:, start:end], past_key_values=past,
                    use_cache=True, **extra)
        logits.append(np.asarray(out.logits))
        past, start = out.past_key_values, end
    return np.concatenate(logits, axis=1), past


@pytest.mark.parametrize("fixture", ["decoder", "cross"])
def test_cached_decoding_equals_full_forward(fixture, request):
    model = request.getfixturevalue(fixture)
    inputs = random_inputs(model.config, "BertLMHeadModel", labels=False, seed=6)
    full = np.asarray(model(**inputs, use_cache=False).logits)
    got, past = _chunks(model, inputs, cuts=(4,))
    keep = inputs["attention_mask"].astype(bool)
    assert np.max(np.abs(got - full)[keep]) <= 1e-5
    N, D = model.config.num_attention_heads, model.config.head_dim
    per_layer = 4 if model.config.add_cross_attention else 2
    assert len(past) == model.config.num_hidden_layers and all(len(layer) == per_layer for layer in past)
    assert past[0][0].shape == (2, N, 7, D)


def test_relative_cache_with_multi_token_chunks_equals_full_forward():
    # Our relative distances use the true query positions, so chunks longer than one token are right too.
    model = _build("relative_key", "BertLMHeadModel", config_overrides={"is_decoder": True})
    inputs = random_inputs(model.config, "BertLMHeadModel", labels=False, seed=8)
    full = np.asarray(model(**inputs, use_cache=False).logits)
    got, _ = _chunks(model, inputs, cuts=(4,))
    keep = inputs["attention_mask"].astype(bool)
    assert np.max(np.abs(got - full)[keep]) <= 1e-5


def test_generate_greedy_equals_argmax_of_full_forward(decoder):
    prompt = np.array([[5, 17, 42], [8, 9, 10]], np.int64)
    out = decoder.generate(prompt, max_new_tokens=3)
    assert out.shape == (2, 6) and np.array_equal(out[:, :3], prompt)
    # Causal model: one uncached forward over the result gives, at t - 1, the logits that chose token t.
    logits = np.asarray(decoder(out[:, :-1], use_cache=False).logits)
    np.testing.assert_array_equal(out[:, 3:], logits[:, 2:].argmax(-1))
    try:
        from bert_torch.modeling import build as torch_build
    except ImportError:
        return
    ref = torch_build("BertLMHeadModel", decoder.config, decoder.canonical_state_dict()).eval()
    np.testing.assert_array_equal(ref.generate(prompt, max_new_tokens=3), out)


def test_generate_sampling_is_seeded(decoder):
    prompt = np.array([[5, 17, 42], [8, 9, 10]], np.int64)  # the shapes of the greedy test: no new compiles
    a = decoder.generate(prompt, max_new_tokens=3, do_sample=True, top_k=5, top_p=0.9, seed=3)
    b = decoder.generate(prompt, max_new_tokens=3, do_sample=True, top_k=5, top_p=0.9, seed=3)
    c = decoder.generate(prompt, max_new_tokens=3, do_sample=True, top_k=5, top_p=0.9, seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 6) and np.all((a >= 0) & (a < decoder.config.vocab_size))
    assert not np.array_equal(a, c)  # the seed matters (5 candidates, 3 draws)


# ------------------------------------------------------------------------------------------ validation
BAD_INPUTS = [
    ("input_ids", lambda i: {**i, "input_ids": np.where(i["input_ids"] == i["input_ids"][0, 1], 99,
                                                       i["input_ids"])}, ["input_ids", "99", "vocab_size=99"]),
    ("negative id", lambda i: {**i, "input_ids": np.concatenate([i["input_ids"][:, :-1],
                                                                 -np.ones((2, 1), np.int64)], 1)},
     ["input_ids", "-1", "[0, 99)"]),
    ("token_type_ids", lambda i: {**i, "token_type_ids": np.full_like(i["token_type_ids"], 3)},
     ["token_type_ids", "3", "type_vocab_size=3"]),
    ("position_ids", lambda i: {**i, "position_ids": np.full_like(i["input_ids"], 64)},
     ["position_ids", "64", "max_position_embeddings=64"]),
    ("too long", lambda i: {"input_ids": np.ones((1, 65), np.int64)},
     ["input_ids", "65", "max_position_embeddings=64"]),
    ("mask shape", lambda i: {**i, "attention_mask": i["attention_mask"][:, :-1]},
     ["attention_mask", "(2, 6)", "(2, 7)"]),
]


@pytest.mark.parametrize("name,make,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_value_error_naming_argument_value_limit(encoder, name, make, words):
    inputs = make(random_inputs(encoder.config, "BertModel", labels=False))
    with pytest.raises(ValueError) as err:
        encoder(**inputs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_cache_length_counts_against_max_positions(decoder):
    past = tuple((np.zeros((1, 4, 60, 8), np.float32),) * 2 for _ in range(2))
    with pytest.raises(ValueError, match=r"5 \(\+ 60 cached\).*max_position_embeddings=64"):
        decoder(np.ones((1, 5), np.int64), past_key_values=past, use_cache=True)


def test_under_user_jit_default_check_raises_and_never_returns_nan(encoder):
    bad = np.array([[1, 2, 120]], np.int32)
    step = jax.jit(lambda ids: encoder.apply(encoder.params, input_ids=ids)["last_hidden_state"],
                   compiler_options=FAST_COMPILE)
    good = step(np.array([[1, 2, 3]], np.int32))
    assert np.isfinite(np.asarray(good)).all()
    with pytest.raises(Exception, match=r"input_ids contains 120, outside the valid range \[0, 99\)"):
        jax.block_until_ready(step(bad))


def test_under_user_jit_checkify_mode_raises_value_error(encoder):
    def f(ids):
        return encoder.apply(encoder.params, input_ids=ids, check="checkify")["last_hidden_state"]
    checked = jax.jit(checkify.checkify(f), compiler_options=FAST_COMPILE)
    err, _ = checked(np.array([[1, 2, 120]], np.int32))
    with pytest.raises(ValueError, match=r"input_ids contains 120.*config.vocab_size=99"):
        err.throw()
    err, out = checked(np.array([[1, 2, 3]], np.int32))
    err.throw()  # no error for good ids
    assert np.isfinite(np.asarray(out)).all()


def test_model_call_under_user_jit_returns_the_output_object(encoder):
    inputs = random_inputs(encoder.config, "BertModel", labels=False)
    out = jax.jit(lambda p, ids, m: encoder(ids, attention_mask=m, params=p), compiler_options=FAST_COMPILE)(
        encoder.params, inputs["input_ids"], inputs["attention_mask"])
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    ref = encoder(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    np.testing.assert_allclose(np.asarray(out.pooler_output), np.asarray(ref.pooler_output), atol=1e-6)


def test_fully_masked_row_is_finite_and_averages(encoder):
    ids = np.array([[3, 4, 5]], np.int64)
    out = encoder(ids, attention_mask=np.zeros((1, 3), np.int64), output_attentions=True)
    probs = np.asarray(out.attentions[0])
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()
    np.testing.assert_allclose(probs, 1 / 3, rtol=1e-6)


def test_float_head_mask_scales_attention(encoder):
    inputs = random_inputs(encoder.config, "BertModel", labels=False)
    base = encoder(**inputs, output_attentions=True).attentions
    hm = np.array([1.0, 0.5, 0.0, 1.0], np.float32)
    masked = encoder(**inputs, head_mask=hm, output_attentions=True).attentions
    # Layer 0 sees the same input, so its maps are exactly the base maps scaled by the float mask.
    np.testing.assert_allclose(np.asarray(masked[0]), np.asarray(base[0]) * hm[None, :, None, None], atol=1e-7)
    with pytest.raises(ValueError, match=r"head_mask has shape \(3,\).*\(4,\)"):
        encoder(**inputs, head_mask=np.ones(3, np.float32))


def test_inputs_embeds_equals_ids(encoder):
    inputs = random_inputs(encoder.config, "BertModel", labels=False)
    table = np.asarray(encoder.params["embeddings"]["word_embeddings"]["embedding"])
    a = encoder(**inputs).last_hidden_state
    b = encoder(inputs_embeds=table[inputs["input_ids"]], attention_mask=inputs["attention_mask"],
                token_type_ids=inputs["token_type_ids"]).last_hidden_state
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ------------------------------------------------------------------------------------------ training hooks
def test_grad_through_params_and_optax_adamw_step_lowers_loss():
    model = _build("absolute", "BertForSequenceClassification")
    inputs = random_inputs(model.config, "BertForSequenceClassification")
    loss_fn = lambda p: model(**inputs, params=p).loss  # noqa: E731
    opt = optax.adamw(1e-2)

    # model(..., params=p) inside the user's own jit + grad (the model's jit nests inside theirs); one
    # compiled train step, called twice, so the second loss is the loss after one AdamW update.
    def train_step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return loss, grads, optax.apply_updates(params, updates), state

    step = jax.jit(train_step, compiler_options=FAST_COMPILE)
    loss0, grads, params, state = step(model.params, opt.init(model.params))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    loss1, *_ = step(params, state)
    assert float(loss1) < float(loss0)


def test_dropout_needs_rng_and_is_reproducible():
    config = tiny_config("absolute", hidden_dropout_prob=0.3)
    model = build("BertModel", config, random_weights(config), compiler_options=FAST_COMPILE)
    ids = np.array([[3, 4, 5, 6]], np.int64)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(ids, train=True)
    k = jax.random.PRNGKey(1)
    a = np.asarray(model(ids, train=True, dropout_rng=k).last_hidden_state)
    b = np.asarray(model(ids, train=True, dropout_rng=k).last_hidden_state)
    c = np.asarray(model(ids, train=True, dropout_rng=jax.random.PRNGKey(2)).last_hidden_state)
    d = np.asarray(model(ids).last_hidden_state)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_remat_switch_gives_same_loss_and_grads():
    config = tiny_config("absolute", num_hidden_layers=1)
    state = random_weights(config, "BertForMaskedLM")
    plain = build("BertForMaskedLM", config, state, compiler_options=FAST_COMPILE)
    remat = build("BertForMaskedLM", config.replace(gradient_checkpointing=True), state,
                  compiler_options=FAST_COMPILE)
    inputs = random_inputs(config, "BertForMaskedLM")
    grad = lambda m: jax.jit(jax.value_and_grad(lambda p: m.apply(p, **inputs)["loss"]),  # noqa: E731
                             compiler_options=FAST_COMPILE)(m.params)
    (l1, g1), (l2, g2) = grad(plain), grad(remat)
    assert abs(float(l1) - float(l2)) < 1e-6
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_compute_with_fp32_params_is_close(encoder):
    config = encoder.config
    half = build("BertModel", config, encoder.canonical_state_dict(), dtype=jnp.bfloat16,
                 param_dtype=jnp.float32, compiler_options=FAST_COMPILE)
    inputs = random_inputs(config, "BertModel", labels=False)
    a = np.asarray(encoder(**inputs).last_hidden_state)
    b = half(**inputs).last_hidden_state
    assert b.dtype == jnp.bfloat16 and jax.tree_util.tree_leaves(half.params)[0].dtype == jnp.float32
    keep = inputs["attention_mask"].astype(bool)
    assert np.max(np.abs(np.asarray(b, np.float32) - a)[keep]) < 0.1


# ------------------------------------------------------------------------------------------ I/O
def test_save_and_from_pretrained_round_trip(tmp_path, encoder):
    encoder.save_pretrained(tmp_path)
    back = bert_flax.BertModel.from_pretrained(tmp_path, compiler_options=FAST_COMPILE)
    for k, v in encoder.canonical_state_dict().items():
        np.testing.assert_array_equal(back.canonical_state_dict()[k], v)
    # A base checkpoint into a head needs allow_new_head, which then names what it initialised.
    with pytest.raises(ValueError, match="allow_new_head"):
        bert_flax.BertForTokenClassification.from_pretrained(tmp_path)
    head = bert_flax.BertForTokenClassification.from_pretrained(tmp_path, allow_new_head=True)
    assert sorted(head.load_report.initialized) == ["classifier.bias", "classifier.weight"]


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels=2.*num_labels=3"):
        bert_flax.BertForQuestionAnswering(tiny_config("absolute"))


def test_labels_and_mask_values_checked_under_user_jit():
    """Issue 17 item 6 in the checked mode: the same ValueError text from the host callback under jax.jit."""
    import bert_flax
    cfg = tiny_config()
    model = bert_flax.BertForMaskedLM(cfg, compiler_options={"xla_backend_optimization_level": 0})
    inp = random_inputs(cfg, "BertForMaskedLM")
    f = jax.jit(lambda ids, mask, labels: model(ids, attention_mask=mask, labels=labels).loss)
    bad = np.where(inp["labels"] == -100, -100, 1000)
    with pytest.raises(Exception, match=r"labels contains 1000, outside the valid range \[0, 99\)"):
        f(inp["input_ids"], inp["attention_mask"], bad).block_until_ready()
    nan_mask = inp["attention_mask"].astype(np.float32)
    nan_mask[0, 0] = np.nan
    with pytest.raises(Exception, match="attention_mask contains nan"):
        f(inp["input_ids"], nan_mask, inp["labels"]).block_until_ready()
    with pytest.raises(ValueError, match="labels contains -5"):
        model(**dict(inp, labels=np.full_like(inp["labels"], -5)))
