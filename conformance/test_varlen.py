"""Unpadded execution (``attn_implementation="varlen"``) in the conformance matrix.

Every backend runs the case with ``varlen`` and is compared, on kept tokens and by the same noise rule as
every other check, with the Hugging Face oracle's padded eager forward (and with the other backends):

* ``unpad``: no attention maps requested, so the model packs the kept tokens, runs every dense layer on
  them and attends per sequence (the speed path);
* ``segments``: attention maps requested, so the padded layout is kept with an in-graph segment mask;
  the maps themselves are compared too;
* gradients of every head's loss through the unpadded path;
* packed rows (Hugging Face ``DataCollatorWithFlattening`` position ids): three sequences in one row equal
  the same three sequences as a padded batch, token for token.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bert_common import varlen
from bert_common.testing import VARIANTS
from bert_common.weights import HEADS
from conformance.compare import diff_tensors
from conformance.suite import Case, Runner, adapter
from conformance.test_parity import BACKENDS, WITH_ORACLE, _assert, case, needs_two
from conformance.tolerances import tolerance

VARLEN_VARIANTS = [v for v in VARIANTS if not VARIANTS[v].get("add_cross_attention")]  # cross-attention: refused
LOSS_CLASSES = [c for c in HEADS if c != "BertModel"]
_runners: dict = {}


def _case(variant: str, model_class: str) -> Case:
    """The suite's tiny case; for question answering with every row full. Its loss is a softmax over all
    S columns, dropped ones included (Hugging Face's definition), and a dropped column's logit is not a
    kept-token quantity: the padded path computes it from a padding token, varlen from a zero state."""
    c = case(variant, model_class)
    if model_class != "BertForQuestionAnswering":
        return c
    return dataclasses.replace(c, inputs={**c.inputs, "attention_mask": np.ones_like(c.inputs["attention_mask"])})


def varlen_case(variant: str, model_class: str) -> Case:
    c = _case(variant, model_class)
    return dataclasses.replace(c, config=c.config.replace(attn_implementation="varlen"))


def padded_reference(variant: str, model_class: str) -> tuple[Runner, Case]:
    """The padded case (eager everywhere) and a runner over the oracle-including backends, shared."""
    if (variant, model_class) not in _runners:
        _runners[(variant, model_class)] = (Runner(WITH_ORACLE), _case(variant, model_class))
    return _runners[(variant, model_class)]


def unpad_results(variant: str, model_class: str):
    """Each backend's varlen forward without attention maps against the truth/oracle padded forward."""
    runner, c = padded_reference(variant, model_class)
    ref_name = runner.backends[-1]  # the oracle when installed, else the last backend (eager, padded)
    ref, _ = runner.result(ref_name, c, "float32", "outputs")
    noise = runner.noise(c, "outputs")
    tol = tolerance("float32", runner.device).for_kind("outputs")
    vc = varlen_case(variant, model_class)
    failures = []
    for b in BACKENDS:
        ad = adapter(b)
        got = ad.forward(ad.build(model_class, vc.config, vc.state), vc.inputs, output_attentions=False)
        keys = [k for k in got if k in ref]
        assert keys and "attentions" not in " ".join(keys)
        diffs = diff_tensors(got, ref, tol, c.mask, model_class, keys=keys, noise=noise)
        failures += [f"{b} vs {ref_name}[padded]: {d.describe()}" for d in diffs if not d.passed]
    return failures


@needs_two
@pytest.mark.parametrize("model_class", list(HEADS))
@pytest.mark.parametrize("variant", ["absolute"])
def test_unpad_every_head_equals_padded(variant, model_class):
    assert not unpad_results(variant, model_class)


@needs_two
@pytest.mark.parametrize("variant", [v for v in VARLEN_VARIANTS if v != "absolute"])
@pytest.mark.parametrize("model_class", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_unpad_position_types_and_decoder_equal_padded(variant, model_class):
    if VARIANTS[variant].get("is_decoder") and model_class == "BertForSequenceClassification":
        model_class = "BertLMHeadModel"
    assert not unpad_results(variant, model_class)


@needs_two
@pytest.mark.parametrize("variant", VARLEN_VARIANTS)
def test_segments_with_attention_maps_equal_padded(variant):
    """output_attentions forces the in-graph segment mask; every backend pair and the oracle agree,
    attention maps included."""
    model_class = "BertLMHeadModel" if VARIANTS[variant].get("is_decoder") else "BertForTokenClassification"
    vc = varlen_case(variant, model_class)
    runner, c = padded_reference(variant, model_class)
    # the varlen backends against each other (noise from the truth backend's own varlen run)
    _assert(Runner(BACKENDS).forward(vc))
    ref_name = runner.backends[-1]
    ref, _ = runner.result(ref_name, c, "float32", "outputs")
    tol = tolerance("float32", runner.device).for_kind("outputs")
    for b in BACKENDS:
        got, _ = Runner([b]).result(b, vc, "float32", "outputs")
        assert any(k.startswith("attentions") for k in got)
        diffs = diff_tensors(got, ref, tol, c.mask, model_class, keys=[k for k in got if k in ref],
                             noise=runner.noise(c, "outputs"))
        assert all(d.passed for d in diffs), [f"{b}: {d.describe()}" for d in diffs if not d.passed]


@needs_two
@pytest.mark.parametrize("model_class", ["BertForPreTraining", "BertForSequenceClassification",
                                         "BertForQuestionAnswering", "BertForMultipleChoice"])
def test_unpad_gradients_equal_padded(model_class):
    """d loss / d every parameter through gather, per-sequence attention and scatter == the padded
    gradients of the oracle (noise: the truth backend's padded fp32 vs float64 gradients)."""
    runner, c = padded_reference("absolute", model_class)
    ref_name = runner.backends[-1]
    ref, _ = runner.result(ref_name, c, "float32", "grads")
    noise = runner.noise(c, "grads")
    tol = tolerance("float32", runner.device).for_kind("grads")
    vc = varlen_case("absolute", model_class)
    for b in BACKENDS:
        ad = adapter(b)
        loss, g = ad.grads(ad.build(model_class, vc.config, vc.state), vc.inputs)
        got = {"loss": np.asarray(loss, np.float32), **{f"grad.{k}": v for k, v in g.items()}}
        diffs = diff_tensors(got, ref, tol, noise=noise)
        assert all(d.passed for d in diffs), [f"{b}: {d.describe()}" for d in diffs if not d.passed]


@needs_two
@pytest.mark.parametrize("variant", ["absolute", "relative_key_query", "decoder"])
def test_packed_row_equals_padded_batch(variant):
    """Three sequences packed into one row with restarting position ids (HF's flattening convention)
    give, token for token, the padded batch of the same three sequences (oracle, eager)."""
    base = case(variant, "BertModel")
    rng = np.random.default_rng(5)
    lengths = (5, 1, 7)
    seqs = [rng.integers(1, base.config.vocab_size, size=n).tolist() for n in lengths]
    types = [rng.integers(0, base.config.type_vocab_size, size=n).tolist() for n in lengths]
    packed = varlen.pack(seqs, token_type_ids=types)
    width = max(lengths)
    padded = {k: np.zeros((len(seqs), width), np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    for i, (s, t) in enumerate(zip(seqs, types)):
        padded["input_ids"][i, :len(s)] = s
        padded["token_type_ids"][i, :len(s)] = t
        padded["attention_mask"][i, :len(s)] = 1
    c = Case("BertModel", variant, base.config, base.state, padded)
    runner = Runner(WITH_ORACLE)
    ref_name = runner.backends[-1]
    ref, _ = runner.result(ref_name, c, "float32", "outputs")
    noise = runner.noise(c, "outputs")
    tol = tolerance("float32", runner.device).for_kind("outputs")
    cfg = base.config.replace(attn_implementation="varlen")
    inputs = {k: packed[k] for k in ("input_ids", "position_ids", "token_type_ids")}
    for b in BACKENDS:
        ad = adapter(b)
        got = ad.forward(ad.build("BertModel", cfg, base.state), inputs, output_attentions=False)
        relaid = {}
        for k, v in got.items():
            if k == "last_hidden_state" or k.startswith("hidden_states"):
                out = np.zeros((len(seqs), width) + v.shape[2:], v.dtype)
                for i, (start, n) in enumerate(zip(packed["sequence_starts"], lengths)):
                    out[i, :n] = v[0, start:start + n]
                relaid[k] = out
        assert "last_hidden_state" in relaid
        diffs = diff_tensors(relaid, ref, tol, c.mask, "BertModel", keys=sorted(relaid), noise=noise)
        assert all(d.passed for d in diffs), [f"{b}: {d.describe()}" for d in diffs if not d.passed]


@needs_two
@pytest.mark.parametrize("variant", ["relative_key", "decoder"])
def test_parity_check_varlen(variant):
    """``bertrio parity --checks varlen``: the Runner check itself, every backend against the padded truth."""
    model_class = "BertLMHeadModel" if VARIANTS[variant].get("is_decoder") else "BertForTokenClassification"
    results = Runner(BACKENDS).varlen(case(variant, model_class))
    assert len(results) == len(BACKENDS)
    _assert(results)
