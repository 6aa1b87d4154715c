"""The behavioural contract: every backend accepts and rejects the same calls, with the same error type and
message, and returns the same fields with the same shapes in the same tuple order.

One module, parametrised over the public classes and a grid of call options; each case runs the call in
every installed backend on the same canonical weights (``bert_common.testing``) and compares what came
back. Numbers are the conformance suite's business; here a few cheap agreements (chunking, gradient
checkpointing, fused vs eager attention, greedy generation) are checked to 1e-4 because they decide
behaviour, not precision.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np
import pytest

from bert_common import semantics
from bert_common.outputs import to_numpy
from bert_common.testing import random_inputs, random_weights, tiny_config

BACKENDS = [b for b, mods in {"torch": ("torch",), "tf": ("tensorflow", "keras"), "flax": ("jax", "flax")}.items()
            if all(importlib.util.find_spec(m) for m in mods)]
pytestmark = pytest.mark.skipif(len(BACKENDS) < 2, reason="the contract compares at least two backends")
CLASSES = semantics.MODEL_CLASSES


def _config(model_class: str, variant: str = "absolute", **overrides):
    if model_class == "BertForQuestionAnswering":
        overrides.setdefault("num_labels", 2)
    return tiny_config(variant, **overrides)


@functools.lru_cache(maxsize=None)
def _model(backend: str, model_class: str, variant: str = "absolute", overrides: tuple = ()):
    config = _config(model_class, variant, **dict(overrides))
    state = random_weights(config, model_class, seed=7)
    if backend == "torch":
        from bert_torch.modeling import build
        return build(model_class, config, state)
    if backend == "tf":
        from bert_tf.modeling import build
        return build(model_class, config, state)
    from bert_flax.modeling import build
    return build(model_class, config, state, compiler_options={"xla_backend_optimization_level": 0})


def _outcome(backend: str, model_class: str, kwargs: dict, variant: str = "absolute", overrides: tuple = ()):
    """("ok", [(field, shape-tree), ...] in tuple order) or ("error", type name, message)."""
    model = _model(backend, model_class, variant, overrides)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model(**kwargs)
    except (ValueError, TypeError) as e:
        return ("error", type(e).__name__, str(e))
    if isinstance(out, tuple):  # return_dict=False: the fields' shapes in tuple order
        return ("ok", [_shapes(v) for v in out])
    return ("ok", [(k, _shapes(v)) for k, v in out.items()])


def _shapes(value):
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    return tuple(np.shape(to_numpy(value)))


def _agree(model_class, kwargs, variant="absolute", overrides=(), exact_type_errors=False):
    """Every backend gives the same outcome; returns it."""
    results = {b: _outcome(b, model_class, kwargs, variant, overrides) for b in BACKENDS}
    first = results[BACKENDS[0]]
    for backend, got in results.items():
        if first[0] == "error" and got[0] == "error" and first[1] == got[1] == "TypeError" and not exact_type_errors:
            continue  # torch's own signature check words it differently; type and argument suffice
        assert got == first, f"{backend} differs from {BACKENDS[0]}:\n{got}\n{first}"
    return first


# ------------------------------------------------------------------------------------------------ grid
OPTIONS = {
    "plain": {},
    "no_labels": {"_drop_labels": True},
    "return_tuple": {"return_dict": False},
    "attentions": {"output_attentions": True},
    "hidden_states": {"output_hidden_states": True},
    "head_mask": {"head_mask": np.array([1.0, 0.0, 1.0, 0.5], np.float32)},
    "head_mask_per_layer": {"head_mask": np.ones((2, 4), np.float32)},
    "inputs_embeds": {"_embeds": True},
    "everything_tuple": {"output_attentions": True, "output_hidden_states": True, "return_dict": False},
}


def _inputs(model_class, option, variant="absolute"):
    config = _config(model_class, variant)
    kw = random_inputs(config, model_class)
    opt = dict(OPTIONS[option])
    if opt.pop("_drop_labels", False):
        kw = {k: v for k, v in kw.items() if k not in semantics.LABEL_ARGS[model_class]}
    if opt.pop("_embeds", False):
        ids = kw.pop("input_ids")
        kw["inputs_embeds"] = np.random.default_rng(0).standard_normal(ids.shape + (config.hidden_size,)).astype(
            np.float32)
    kw.update(opt)
    return kw


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("model_class", CLASSES)
def test_fields_shapes_and_tuple_order_agree(model_class, option):
    outcome = _agree(model_class, _inputs(model_class, option))
    assert outcome[0] == "ok", outcome
    if option != "return_tuple" and option != "everything_tuple":
        fields = [f for f, _ in outcome[1]]
        from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
        declared = OUTPUT_FIELDS[OUTPUT_OF[model_class]]
        assert fields == [f for f in declared if f in fields]  # HF's order
        assert ("loss" in fields) == (option != "no_labels" and model_class != "BertModel")


@pytest.mark.parametrize("model_class", ["BertModel", "BertLMHeadModel", "BertForMaskedLM"])
def test_encoder_states_and_cache(model_class):
    kw = random_inputs(_config(model_class, "cross_attention"), model_class)
    if model_class == "BertForMaskedLM":  # HF's BertForMaskedLM takes encoder states too
        kw["encoder_hidden_states"] = np.ones((2, 5, 32), np.float32)
    if "use_cache" in semantics.call_args(model_class):
        kw["use_cache"] = True
    outcome = _agree(model_class, dict(kw, output_attentions=True), "cross_attention")
    assert outcome[0] == "ok"
    fields = dict(outcome[1])
    assert ("past_key_values" in fields) == (model_class == "BertModel")  # labels switch the LM cache off
    assert ("cross_attentions" in fields) == (model_class != "BertForMaskedLM")


@pytest.mark.parametrize("model_class", ["BertModel", "BertLMHeadModel"])
def test_use_cache_on_an_encoder_is_ignored(model_class):
    kw = random_inputs(_config(model_class), model_class, labels=False)
    outcome = _agree(model_class, dict(kw, use_cache=True))
    assert outcome[0] == "ok" and "past_key_values" not in dict(outcome[1])


def test_nsp_accepts_next_sentence_label_as_hf_does():
    kw = random_inputs(_config("BertForNextSentencePrediction"), "BertForNextSentencePrediction")
    kw["next_sentence_label"] = kw.pop("labels")
    outcome = _agree("BertForNextSentencePrediction", kw)
    assert outcome[0] == "ok" and "loss" in dict(outcome[1])


@pytest.mark.parametrize("model_class,kwargs", [
    ("BertForSequenceClassification", {"encoder_hidden_states": np.ones((2, 5, 32), np.float32)}),
    ("BertForTokenClassification", {"use_cache": True}),
    ("BertForQuestionAnswering", {"labels": np.zeros(2, np.int64)}),
    ("BertModel", {"labels": np.zeros(2, np.int64)}),
])
def test_arguments_a_class_does_not_take_are_type_errors(model_class, kwargs):
    kw = dict(random_inputs(_config(model_class), model_class, labels=False), **kwargs)
    outcome = _agree(model_class, kw)
    assert outcome[:2] == ("error", "TypeError")
    assert next(iter(kwargs)) in outcome[2]


# ------------------------------------------------------------------------------------------------ bad input
def _bad(model_class, name):
    config = _config(model_class)
    kw = random_inputs(config, model_class)
    if name == "one_d_ids":
        kw = {"input_ids": kw["input_ids"].reshape(-1)[:5]}
    elif name == "empty":
        kw = {"input_ids": np.zeros((2, 0), np.int64)}
    elif name == "id_too_large":
        kw["input_ids"] = kw["input_ids"].copy()
        kw["input_ids"][..., 1] = config.vocab_size
    elif name == "nan_mask":
        kw["attention_mask"] = kw["attention_mask"].astype(np.float32)
        kw["attention_mask"][..., 0] = np.nan
    elif name == "mask_two":
        kw["attention_mask"] = kw["attention_mask"].copy() * 2
    elif name == "label_too_large":
        kw["labels"] = np.full_like(kw["labels"], 1000)
    elif name == "label_negative":
        kw["labels"] = np.full_like(kw["labels"], -5)
    elif name == "float_labels":
        kw["labels"] = kw["labels"].astype(np.float32)
    elif name == "label_shape":
        kw["labels"] = kw["labels"][:1]
    return kw


LABEL_CASES = ["label_too_large", "label_negative", "float_labels", "label_shape"]


@pytest.mark.parametrize("name", ["one_d_ids", "empty", "id_too_large", "nan_mask", "mask_two"])
@pytest.mark.parametrize("model_class", ["BertModel", "BertForSequenceClassification", "BertForMultipleChoice"])
def test_bad_inputs_same_value_error(model_class, name):
    if model_class == "BertForMultipleChoice" and name in ("one_d_ids", "empty"):
        pytest.skip("a rank error of multiple choice is its own message (tested below)")
    outcome = _agree(model_class, _bad(model_class, name))
    assert outcome[:2] == ("error", "ValueError"), outcome
    arg = {"one_d_ids": "input_ids", "empty": "input_ids", "id_too_large": "input_ids"}.get(name, "attention_mask")
    assert outcome[2].startswith(arg)


@pytest.mark.parametrize("name", LABEL_CASES)
@pytest.mark.parametrize("model_class", ["BertForMaskedLM", "BertForTokenClassification",
                                         "BertForMultipleChoice", "BertForNextSentencePrediction"])
def test_bad_labels_same_value_error(model_class, name):
    outcome = _agree(model_class, _bad(model_class, name))
    if name == "float_labels" and model_class == "BertForSequenceClassification":
        return  # float labels there mean multi-label classification (HF)
    assert outcome[:2] == ("error", "ValueError"), outcome
    assert outcome[2].startswith("labels")


def test_multiple_choice_needs_choices_axis():
    outcome = _agree("BertForMultipleChoice", {"input_ids": np.ones((2, 5), np.int64)})
    assert outcome == ("error", "ValueError",
                       "input_ids has shape (2, 5) but BertForMultipleChoice needs (batch, num_choices, seq)")


def test_question_answering_needs_two_labels():
    errors = set()
    for backend in BACKENDS:
        with pytest.raises(ValueError) as e:
            _model.__wrapped__(backend, "BertForQuestionAnswering", "absolute", (("num_labels", 3),))
        errors.add(str(e.value))
    assert errors == {"BertForQuestionAnswering needs config.num_labels=2 (start, end), got num_labels=3"}


# ------------------------------------------------------------------------------------------------ config options
def _numbers(backend, model_class, kw, overrides, variant="absolute"):
    model = _model(backend, model_class, variant, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_numpy(model(**kw)).to_tuple()


@pytest.mark.parametrize("overrides", [
    (("chunk_size_feed_forward", 3),),
    (("gradient_checkpointing", True),),
    (("attn_implementation", "sdpa"),),
    (("attn_implementation", "eager"),),
])
def test_config_options_are_honoured_and_change_no_result(overrides):
    kw = random_inputs(_config("BertForMaskedLM", "relative_key_query"), "BertForMaskedLM")
    for backend in BACKENDS:
        ref = _numbers(backend, "BertForMaskedLM", kw, (), "relative_key_query")
        got = _numbers(backend, "BertForMaskedLM", kw, overrides, "relative_key_query")
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4, err_msg=f"{backend} {overrides}")


# ------------------------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("variant", ["decoder", "cross_attention"])
@pytest.mark.parametrize("eos", [None, "config", "argument"])
def test_generate_agrees(variant, eos):
    overrides = (("eos_token_id", 5),) if eos == "config" else ()
    config = _config("BertLMHeadModel", variant, **dict(overrides))
    ids = random_inputs(config, "BertLMHeadModel", labels=False)["input_ids"][:, :4]
    kw = {"max_new_tokens": 4}
    if variant == "cross_attention":
        kw["encoder_hidden_states"] = np.random.default_rng(1).standard_normal((2, 5, 32)).astype(np.float32)
    tokens = {}
    for backend in BACKENDS:
        model = _model(backend, "BertLMHeadModel", variant, overrides)
        if eos in ("config", "argument"):  # make the first greedy token the end token, in every backend
            first = model.generate(ids, **kw)[:, 4]
            eos_id = int(first[0])
            if eos == "argument":
                kw_b = dict(kw, eos_token_id=eos_id)
            else:
                model.config.eos_token_id = eos_id
                kw_b = kw
            tokens[backend] = model.generate(ids, **kw_b)
            model.config.eos_token_id = 5
        else:
            tokens[backend] = model.generate(ids, **kw)
    first = tokens[BACKENDS[0]]
    for backend, got in tokens.items():
        np.testing.assert_array_equal(got, first, err_msg=backend)
    if eos in ("config", "argument"):
        # row 0 ended on its first token: the rest is padding (pad_token_id 0)
        assert (first[0, 5:] == 0).all()


# ------------------------------------------------------------------------------------------------ to_numpy
def test_to_numpy_is_the_backend_neutral_way_out():
    """``out.to_numpy()``: the same class and fields, NumPy arrays (torch tensors that require grad
    included), nested tuples kept; the logits agree across backends."""
    logits = {}
    for backend in BACKENDS:
        model = _model(backend, "BertForSequenceClassification")
        out = model(**random_inputs(model.config, "BertForSequenceClassification"), output_hidden_states=True)
        arr = out.to_numpy()
        assert type(arr) is type(out) and list(arr) == list(out)
        assert all(isinstance(h, np.ndarray) for h in arr.hidden_states) and len(arr.hidden_states) == 3
        assert isinstance(arr.logits, np.ndarray) and arr.logits.dtype == np.float32 and arr.loss.shape == ()
        logits[backend] = arr.logits
    for backend, got in logits.items():
        np.testing.assert_allclose(got, logits[BACKENDS[0]], rtol=0, atol=1e-4, err_msg=backend)
