"""DESIGN §6 input validation in bert_tf: eager ValueError, and the same message in-graph under tf.function."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import bert_tf  # noqa: E402
from bert_common.testing import random_inputs, tiny_config  # noqa: E402
from bert_common.validation import check_inputs  # noqa: E402

SPEC = tf.TensorSpec([None, None], tf.int64)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config("absolute")
    model = bert_tf.BertModel(cfg)
    # One trace each, dynamic shapes, reused by every case (tracing is the slow part).
    graph = tf.function(lambda ids, mask, types: model(input_ids=ids, attention_mask=mask, token_type_ids=types)
                        ["last_hidden_state"], input_signature=[SPEC, SPEC, SPEC])
    graph_pos = tf.function(lambda ids, pos: model(input_ids=ids, position_ids=pos)["last_hidden_state"],
                            input_signature=[SPEC, SPEC])
    return cfg, model, graph, graph_pos


def _bad_cases(cfg):
    """name -> inputs (ids, mask, types, position_ids) that break exactly one rule of DESIGN §6."""
    base = random_inputs(cfg, "BertModel", labels=False)
    ids, mask, types = base["input_ids"], base["attention_mask"], base["token_type_ids"]
    cases = {}
    x = ids.copy()
    x[1, 3] = cfg.vocab_size + 5
    cases["id_too_large"] = dict(input_ids=x, attention_mask=mask, token_type_ids=types)
    x = ids.copy()
    x[0, 0] = -1
    cases["id_negative"] = dict(input_ids=x, attention_mask=mask, token_type_ids=types)
    t = types.copy()
    t[0, 2] = cfg.type_vocab_size
    cases["token_type"] = dict(input_ids=ids, attention_mask=mask, token_type_ids=t)
    cases["mask_shape"] = dict(input_ids=ids, attention_mask=mask[:, :-1], token_type_ids=types)
    cases["types_shape"] = dict(input_ids=ids, attention_mask=mask, token_type_ids=types[:1])
    long = np.ones((1, cfg.max_position_embeddings + 1), np.int64)
    cases["too_long"] = dict(input_ids=long, attention_mask=long, token_type_ids=np.zeros_like(long))
    cases["position"] = dict(input_ids=ids, position_ids=np.full((1, ids.shape[1]), cfg.max_position_embeddings))
    return cases


CASES = ["id_too_large", "id_negative", "token_type", "mask_shape", "types_shape", "too_long", "position"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_same_message_eager_and_in_graph(setup, case):
    cfg, model, graph, graph_pos = setup
    inputs = _bad_cases(cfg)[case]
    with pytest.raises(ValueError) as shared:
        check_inputs(cfg, **inputs)
    message = str(shared.value)
    with pytest.raises(ValueError) as eager:
        model(**inputs)
    assert str(eager.value) == message
    with pytest.raises(tf.errors.InvalidArgumentError) as traced:
        if case == "position":
            graph_pos(tf.constant(inputs["input_ids"]), tf.constant(inputs["position_ids"]))
        else:
            graph(*(tf.constant(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    assert message in traced.value.message


def test_messages_name_argument_value_and_limit(setup):
    cfg, model, _, _ = setup
    with pytest.raises(ValueError) as e:
        model(**_bad_cases(cfg)["id_too_large"])
    assert str(e.value) == (f"input_ids contains {cfg.vocab_size + 5}, outside the valid range [0, {cfg.vocab_size}) "
                            f"set by config.vocab_size={cfg.vocab_size}")


def test_valid_input_passes_in_graph(setup):
    cfg, model, graph, _ = setup
    inp = random_inputs(cfg, "BertModel", labels=False)
    got = graph(*(tf.constant(inp[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    np.testing.assert_allclose(got.numpy(), model(**inp).last_hidden_state.numpy(), atol=1e-6)


def test_other_argument_errors(setup):
    cfg, model, _, _ = setup
    inp = random_inputs(cfg, "BertModel", labels=False)
    with pytest.raises(ValueError, match="head_mask has shape"):
        model(**inp, head_mask=np.ones((3,), np.float32))
    with pytest.raises(ValueError, match="input_ids must hold integers"):
        model(input_ids=inp["input_ids"].astype(np.float32))
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=inp["input_ids"], inputs_embeds=np.zeros((2, 7, cfg.hidden_size), np.float32))
    # use_cache=True on an encoder is ignored (Hugging Face's torch BERT; the contract suite checks all three).
    assert "past_key_values" not in model(**inp, use_cache=True)
    with pytest.raises(ValueError, match="unknown keys"):
        model({"input_ids": inp["input_ids"], "attention_masks": inp["attention_mask"]})


def test_encoder_mask_shape_eager_and_in_graph():
    cfg = tiny_config("cross_attention")
    model = bert_tf.BertModel(cfg)
    inp = random_inputs(cfg, "BertModel", labels=False)
    bad = dict(inp, encoder_attention_mask=inp["encoder_attention_mask"][:, :-1])
    with pytest.raises(ValueError) as shared:
        check_inputs(cfg, input_ids=bad["input_ids"], encoder_hidden_shape=bad["encoder_hidden_states"].shape,
                     encoder_attention_mask=bad["encoder_attention_mask"])
    with pytest.raises(ValueError) as eager:
        model(**bad)
    assert str(eager.value) == str(shared.value)
    graph = tf.function(lambda ids, states, emask: model(input_ids=ids, encoder_hidden_states=states,
                                                        encoder_attention_mask=emask)["last_hidden_state"])
    # Static shapes: the mismatch is known while tracing and raised then, as the same ValueError.
    with pytest.raises(ValueError) as traced:
        graph(tf.constant(bad["input_ids"]), tf.constant(bad["encoder_hidden_states"]),
              tf.constant(bad["encoder_attention_mask"]))
    assert str(shared.value) in str(traced.value)
    # Dynamic shapes: the in-graph assert carries the same message.
    spec = [tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None, cfg.hidden_size], tf.float32),
            tf.TensorSpec([None, None], tf.int64)]
    dynamic = tf.function(graph.python_function, input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError) as traced:
        dynamic(tf.constant(bad["input_ids"]), tf.constant(bad["encoder_hidden_states"]),
                tf.constant(bad["encoder_attention_mask"]))
    assert str(shared.value) in traced.value.message


def test_compiled_entry_point_checks_on_host_and_user_xla_gives_nan(setup):
    """XLA has no runtime errors: ``model.checked_xla()`` validates concrete inputs first; a user's own
    ``tf.function(jit_compile=True)`` turns a bad id or mask value into NaN outputs, never plausible numbers."""
    cfg, model, _, _ = setup
    inp = random_inputs(cfg, "BertModel", labels=False)
    run = model.checked_xla()
    np.testing.assert_allclose(run(**inp).last_hidden_state.numpy(), model(**inp).last_hidden_state.numpy(),
                               atol=1e-5)
    bad = dict(inp, input_ids=inp["input_ids"].copy())
    bad["input_ids"][0, 0] = cfg.vocab_size + 5
    with pytest.raises(ValueError) as e:
        run(**bad)
    assert str(e.value).startswith(f"input_ids contains {cfg.vocab_size + 5}, outside the valid range")
    xla = tf.function(lambda ids, m: model(input_ids=ids, attention_mask=m)["last_hidden_state"], jit_compile=True)
    assert np.isfinite(xla(tf.constant(inp["input_ids"]), tf.constant(inp["attention_mask"])).numpy()).all()
    assert np.isnan(xla(tf.constant(bad["input_ids"]), tf.constant(inp["attention_mask"])).numpy()).all()
    two = inp["attention_mask"] * 2
    assert np.isnan(xla(tf.constant(inp["input_ids"]), tf.constant(two)).numpy()).all()


def test_labels_checked_eager_and_in_graph():
    cfg = tiny_config()
    model = bert_tf.BertForMaskedLM(cfg)
    inp = random_inputs(cfg, "BertForMaskedLM")
    bad = dict(inp, labels=np.where(inp["labels"] == -100, -100, cfg.vocab_size))
    with pytest.raises(ValueError) as eager:
        model(**bad)
    assert str(eager.value).startswith(f"labels contains {cfg.vocab_size}, outside the valid range [0, {cfg.vocab_size})")
    spec = [tf.TensorSpec([None, None], tf.int64)] * 3
    graph = tf.function(lambda ids, m, y: model(input_ids=ids, attention_mask=m, labels=y)["loss"], input_signature=spec)
    with pytest.raises(tf.errors.InvalidArgumentError) as traced:
        graph(*(tf.constant(bad[k]) for k in ("input_ids", "attention_mask", "labels")))
    assert str(eager.value) in traced.value.message
