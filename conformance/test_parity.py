"""The cross-framework conformance matrix, runnable as ``pytest --pyargs conformance``.

Pairs of every installed backend (torch, tf, flax; the Hugging Face oracle joins forward and gradient
checks when ``transformers`` is installed) × every head × every tiny config variant. All backends load
the same canonical weights, generated once from a seed in NumPy. A failure message names the check,
the backend pair, head, variant, dtype/device, the first differing tensor, its max |Δ| and values.
"""
from __future__ import annotations

import pytest

from bert_common.testing import VARIANTS, missing_reason
from bert_common.weights import HEADS
from conformance.cases import CACHE_CLASSES, tiny_case
from conformance.suite import ALL_BACKENDS, ORACLE, Runner, available_backends

BACKENDS = available_backends(ALL_BACKENDS)
WITH_ORACLE = BACKENDS + [b for b in available_backends((ORACLE,))]
needs_two = pytest.mark.skipif(len(BACKENDS) < 2, reason=missing_reason(f"need two backends, have {BACKENDS}"))
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


# The AdamW step depends on the variant only through the gradients (test_gradient_parity checks every
# (variant, head) above) and through which parameters exist: every head's parameter set on absolute, plus
# the relative (distance_embedding) and cross-attention (crossattention) parameter sets once each.
ADAMW_CASES = ([("absolute", c) for c in LOSS_CLASSES]
               + [("relative_key_query", "BertForPreTraining"), ("cross_attention", "BertLMHeadModel")])


@needs_two
@pytest.mark.slow
@pytest.mark.parametrize("variant,model_class", ADAMW_CASES)
def test_adamw_step_parity(variant, model_class):
    _assert(Runner(BACKENDS).adamw(case(variant, model_class)))


@needs_two
@pytest.mark.slow
def test_train_parity_twenty_updates():
    """Each backend's Trainer, 20 identical updates of a tiny BertForPreTraining (dropout off): every
    update's loss and every final weight agree within the fp32 noise of the float64 truth trainer's run
    (issue #14); the run really trains, so the comparison is of moving weights."""
    runner = Runner(BACKENDS, train_steps=20)  # 50 cost 105 s CPU; 20 keep it near a minute
    results = runner.train(case("absolute", "BertForPreTraining"))
    assert len(results) == len(BACKENDS) * (len(BACKENDS) - 1) // 2
    _assert(results)
    losses = {d.path: d.ref_max for d in results[0].diffs if d.path.startswith("loss.step_")}
    assert len(losses) == 20 and losses["loss.step_020"] < losses["loss.step_001"] - 0.2


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


# ------------------------------------------------------------------ call options and label kinds
# What the former per-backend oracle tests checked beyond the matrix: inputs other than ids (head masks
# of both shapes, explicit positions, embeddings instead of ids), every problem type of sequence
# classification, all-ignored labels (NaN loss, as in HF), encoder states given to a masked LM.
def _option_case(name: str):
    import numpy as np

    from bert_common.testing import random_inputs, random_weights, tiny_config
    from conformance.suite import Case
    rng = np.random.default_rng(0)
    if name.startswith(("head_mask", "position_ids", "inputs_embeds")):
        cfg = tiny_config("relative_key")
        inp = random_inputs(cfg, "BertForMaskedLM")
        extra = {
            "head_mask_shared": {"head_mask": np.array([1.0, 0.0, 0.5, 1.0], np.float32)},
            "head_mask_per_layer": {"head_mask": rng.uniform(0.2, 1.0, (cfg.num_hidden_layers, 4)).astype(np.float32)},
            "position_ids": {"position_ids": np.array([[3, 4, 5, 6, 7, 8, 9], [0, 2, 4, 6, 8, 10, 12]], np.int64)},
            "inputs_embeds": {"inputs_embeds": (0.3 * rng.standard_normal((2, 7, cfg.hidden_size))).astype(np.float32)},
        }[name]
        if "inputs_embeds" in extra:
            inp.pop("input_ids")
        return Case("BertForMaskedLM", name, cfg, random_weights(cfg, "BertForMaskedLM", seed=3), {**inp, **extra})
    if name in ("regression", "multi_label_classification", "single_label_classification", "regression_1_label"):
        labels = {"regression": np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], np.float32),
                  "multi_label_classification": np.array([[1, 0, 1], [0, 1, 1]], np.float32),
                  "single_label_classification": np.array([2, 0], np.int64),
                  "regression_1_label": np.array([0.25, -1.5], np.float32)}[name]
        cfg = tiny_config(num_labels=1) if name == "regression_1_label" else tiny_config(problem_type=name)
        inp = {**random_inputs(cfg, "BertForSequenceClassification", labels=False), "labels": labels}
        return Case("BertForSequenceClassification", name, cfg,
                    random_weights(cfg, "BertForSequenceClassification", seed=4), inp)
    if name == "all_ignored_labels":
        cfg = tiny_config()
        inp = random_inputs(cfg, "BertForTokenClassification")
        inp["labels"] = np.full_like(inp["labels"], -100)
        return Case("BertForTokenClassification", name, cfg, random_weights(cfg, "BertForTokenClassification", seed=6),
                    inp)
    if name == "masked_lm_with_encoder_states":
        cfg = tiny_config("cross_attention")
        inp = random_inputs(cfg, "BertForMaskedLM")
        enc = random_inputs(cfg, "BertModel", labels=False)
        inp.update({k: enc[k] for k in ("encoder_hidden_states", "encoder_attention_mask")})
        return Case("BertForMaskedLM", name, cfg, random_weights(cfg, "BertForMaskedLM", seed=1), inp)
    raise ValueError(name)


OPTION_CASES = ("head_mask_shared", "head_mask_per_layer", "position_ids", "inputs_embeds", "regression",
                "multi_label_classification", "single_label_classification", "regression_1_label",
                "all_ignored_labels", "masked_lm_with_encoder_states")
GRAD_OPTION_CASES = ("regression", "multi_label_classification", "single_label_classification")


@needs_two
@pytest.mark.parametrize("name", OPTION_CASES)
def test_call_option_parity(name):
    import numpy as np
    c = _option_case(name)
    results = Runner(WITH_ORACLE).forward(c)
    _assert(results)
    if name == "all_ignored_labels":  # HF semantics: the loss over no label is NaN, in every backend
        assert all(np.isnan(Runner(WITH_ORACLE).result(b, c, "float32", "outputs")[0]["loss"]) for b in WITH_ORACLE)
    if name in GRAD_OPTION_CASES:
        _assert(Runner(WITH_ORACLE).grads(c))


@pytest.mark.skipif("torch" not in BACKENDS or ORACLE not in WITH_ORACLE,
                    reason=missing_reason("bert_torch and the HF oracle"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torch_fused_attention_matches_eager_oracle(variant):
    """bert_torch's fused path (SDPA; relative scores folded into its bias) against the eager oracle, with
    no attention maps requested so it really runs fused, and without a fallback warning."""
    import warnings

    from conformance.adapters import torch as torch_adapter
    from conformance.compare import diff_tensors
    from conformance.tolerances import tolerance
    model_class = "BertLMHeadModel" if VARIANTS[variant].get("is_decoder") else "BertForMaskedLM"
    c = case(variant, model_class)
    runner = Runner(["torch", ORACLE])
    fused = torch_adapter.build(model_class, c.config.replace(attn_implementation="sdpa"), c.state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        got = torch_adapter.forward(fused, c.inputs, output_attentions=False)
    ref, _ = runner.result(ORACLE, c, "float32", "outputs")
    ref = {k: v for k, v in ref.items() if k in got}
    diffs = diff_tensors(got, ref, tolerance("float32", "cpu").outputs, c.mask, model_class,
                         noise=runner.noise(c, "outputs"))
    assert diffs and all(d.passed for d in diffs), [d.describe() for d in diffs if not d.passed]
