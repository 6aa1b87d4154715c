"""The cross-framework conformance matrix, runnable as ``pytest --pyargs conformance``.

Pairs of every installed backend (torch, tf, flax; the Hugging Face oracle joins forward and gradient
checks when ``transformers`` is installed) × every head × every tiny config variant. All backends load
the same canonical weights, generated once from a seed in NumPy. A failure message names the check,
the backend pair, head, variant, dtype/device, the first differing tensor, its max |Δ| and values.
"""
from __future__ import annotations

import pytest

from bert_common.testing import VARIANTS
from bert_common.weights import HEADS
from conformance.cases import CACHE_CLASSES, tiny_case
from conformance.suite import ALL_BACKENDS, ORACLE, Runner, available_backends

BACKENDS = available_backends(ALL_BACKENDS)
WITH_ORACLE = BACKENDS + [b for b in available_backends((ORACLE,))]
needs_two = pytest.mark.skipif(len(BACKENDS) < 2, reason=f"need two backends, have {BACKENDS}")
CLASSES = list(HEADS)
LOSS_CLASSES = [c for c in CLASSES if c != "BertModel"]  # BertModel has no loss to differentiate
# Gradient / AdamW tier: every head on three variants that between them exercise every code path
# (absolute; relative_key_query with the tanh GELU; decoder with cross-attention).
GRAD_VARIANTS = ("absolute", "relative_key_query", "cross_attention")

_cases: dict = {}


def with_oracle(variant: str, model_class: str) -> list[str]:
    """Backends plus the HF oracle, except where the oracle itself cannot run the case: HF 4.57 crashes
    (IndexError in BertEncoder) when a cross-attention config runs a head without encoder states and
    attentions are requested. Our backends still run and are compared with each other there."""
    from bert_common.testing import CROSS_ATTENTION_CLASSES
    if variant == "cross_attention" and model_class not in CROSS_ATTENTION_CLASSES:
        return BACKENDS
    return WITH_ORACLE


def case(variant: str, model_class: str):
    key = (variant, model_class)
    if key not in _cases:
        _cases[key] = tiny_case(variant, model_class)
    return _cases[key]


def _assert(results):
    assert results, "no result produced"
    bad = [r for r in results if not r.passed]
    assert not bad, "\n".join(r.message() for r in bad)


@needs_two
@pytest.mark.parametrize("model_class", CLASSES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_parity(variant, model_class):
    _assert(Runner(with_oracle(variant, model_class)).forward(case(variant, model_class)))


@needs_two
@pytest.mark.parametrize("model_class", LOSS_CLASSES)
@pytest.mark.parametrize("variant", GRAD_VARIANTS)
def test_gradient_parity(variant, model_class):
    _assert(Runner(with_oracle(variant, model_class)).grads(case(variant, model_class)))


@needs_two
@pytest.mark.slow
@pytest.mark.parametrize("model_class", LOSS_CLASSES)
@pytest.mark.parametrize("variant", GRAD_VARIANTS)
def test_adamw_step_parity(variant, model_class):
    _assert(Runner(BACKENDS).adamw(case(variant, model_class)))


@needs_two
@pytest.mark.parametrize("model_class", CACHE_CLASSES)
@pytest.mark.parametrize("variant", ["decoder", "cross_attention", "relative_key_decoder"])
def test_cached_decoding_equals_full_forward(variant, model_class):
    if variant == "relative_key_decoder":
        from bert_common.testing import random_inputs, random_weights, tiny_config
        from conformance.suite import Case
        cfg = tiny_config("relative_key_query", is_decoder=True)
        c = Case(model_class, variant, cfg, random_weights(cfg, model_class), random_inputs(cfg, model_class, seq=9))
    else:
        c = case(variant, model_class)
    _assert(Runner(BACKENDS).cache(c))


@needs_two
@pytest.mark.parametrize("model_class", ["BertModel", "BertForPreTraining", "BertForQuestionAnswering"])
def test_train_mode_without_dropout_equals_eval(model_class):
    _assert(Runner(BACKENDS).train_mode(case("absolute", model_class)))


@needs_two
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model_class", ["BertModel", "BertForMaskedLM"])
def test_half_precision_against_fp32_reference(dtype, model_class):
    _assert(Runner(BACKENDS).half(case("absolute", model_class), dtype))
