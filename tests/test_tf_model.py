"""bert_tf behaviour without the oracle: weights, loading, cache protocol, generation, losses, dtypes."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import bert_tf  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.weights import SCHEMES, WeightMappingError, canonical_shapes, init_weights, scheme_path  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    """A decoder LM with cross-attention and relative_key_query positions: the hardest cache case."""
    cfg = tiny_config("cross_attention", position_embedding_type="relative_key_query")
    model = bert_tf.BertLMHeadModel(cfg)
    model.load_canonical_state_dict(random_weights(cfg, "BertLMHeadModel", seed=1))
    return model


def test_public_names_and_aliases():
    for name in ("BertConfig", "BertModel", "BertForPreTraining", "BertLMHeadModel", "BertForMaskedLM",
                 "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
                 "BertForTokenClassification", "BertForQuestionAnswering"):
        assert hasattr(bert_tf, name)
        if name != "BertConfig":
            assert getattr(bert_tf, "TF" + name) is getattr(bert_tf, name)


def test_variable_paths_follow_tf_scheme_and_init_is_shared():
    cfg = tiny_config("relative_key", tie_word_embeddings=False)
    model = bert_tf.BertForPreTraining(cfg, seed=5)
    expected = {scheme_path(n, SCHEMES["tf"])[0] for n in canonical_shapes(cfg, "BertForPreTraining")}
    assert set(model.named_variables()) == expected
    assert "bert/encoder/layer/0/attention/self/query/kernel" in expected
    assert "cls/predictions/decoder/kernel" in expected      # untied decoder owns a kernel
    ref = init_weights(cfg, "BertForPreTraining", seed=5)
    got = model.canonical_state_dict()
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    # Keras sees exactly these variables as trainable (nothing hidden, nothing extra).
    assert len(model.trainable_variables) == len(expected)


def test_save_load_roundtrip_and_head_conversion(tmp_path):
    cfg = tiny_config("absolute")
    state = random_weights(cfg, "BertForPreTraining", seed=2)
    model = bert_tf.BertForPreTraining(cfg)
    model.load_canonical_state_dict(state)
    model.save_pretrained(tmp_path / "pt")
    again = bert_tf.BertForPreTraining.from_pretrained(tmp_path / "pt")
    for name, arr in again.canonical_state_dict().items():
        np.testing.assert_array_equal(arr, state[name], err_msg=name)
    inp = random_inputs(cfg, "BertModel", labels=False)
    # A pre-training checkpoint into the base model: bert. prefix stripped, heads reported as unused.
    base = bert_tf.BertModel.from_pretrained(tmp_path / "pt")
    assert any(n.startswith("cls.") for n in base.load_report.unexpected)
    np.testing.assert_allclose(base(**inp).last_hidden_state.numpy(),
                               again.bert(**inp).last_hidden_state.numpy(), atol=0, rtol=0)
    # A new classification head only on request, and named.
    with pytest.raises(WeightMappingError, match="allow_new_head"):
        bert_tf.BertForSequenceClassification.from_pretrained(tmp_path / "pt")
    clf = bert_tf.BertForSequenceClassification.from_pretrained(tmp_path / "pt", allow_new_head=True)
    assert sorted(clf.load_report.initialized) == ["classifier.bias", "classifier.weight"]


def test_cached_decoding_equals_full_forward(lm):
    cfg = lm.config
    inp = random_inputs(cfg, "BertLMHeadModel", labels=False, seq=8)
    full = lm(**inp).logits.numpy()
    enc = {k: v for k, v in inp.items() if k.startswith("encoder_")}
    ids, types, mask = inp["input_ids"], inp["token_type_ids"], inp["attention_mask"]
    past, parts = None, []
    for lo, hi in ((0, 3), (3, 5), (5, 6), (6, 8)):  # a multi-token chunk after the prefix, then single steps
        out = lm(input_ids=ids[:, lo:hi], token_type_ids=types[:, lo:hi], attention_mask=mask[:, :hi],
                 past_key_values=past, use_cache=True, **enc)
        past = out.past_key_values
        parts.append(out.logits.numpy())
    assert len(past) == cfg.num_hidden_layers and len(past[0]) == 4          # self k, v + cross k, v
    assert past[0][0].shape == (2, cfg.num_attention_heads, 8, cfg.head_dim)
    assert past[0][2].shape == (2, cfg.num_attention_heads, 5, cfg.head_dim)
    keep = mask.astype(bool)
    assert np.abs(np.concatenate(parts, 1) - full)[keep].max() <= 1e-5


def test_generate_greedy_equals_uncached_argmax():
    cfg = tiny_config("decoder", position_embedding_type="relative_key")
    model = bert_tf.BertLMHeadModel(cfg)
    model.load_canonical_state_dict(random_weights(cfg, "BertLMHeadModel", seed=4))
    prompt = np.array([[5, 17, 42], [8, 9, 10]], np.int64)
    got = model.generate(prompt, max_new_tokens=6)
    ids = prompt
    for _ in range(6):  # the definition of greedy decoding, without the cache
        nxt = model(input_ids=ids, use_cache=False).logits.numpy()[:, -1].argmax(-1)
        ids = np.concatenate([ids, nxt[:, None]], 1)
    np.testing.assert_array_equal(got, ids)
    sampled = model.generate(prompt, max_new_tokens=4, do_sample=True, top_k=5, seed=3)
    np.testing.assert_array_equal(sampled, model.generate(prompt, max_new_tokens=4, do_sample=True, top_k=5, seed=3))


def test_generate_matches_bert_torch():
    torch_backend = pytest.importorskip("bert_torch")
    if not hasattr(torch_backend, "BertLMHeadModel"):
        pytest.skip("bert_torch has not landed yet")
    cfg = tiny_config("decoder")
    state = random_weights(cfg, "BertLMHeadModel", seed=6)
    ours = bert_tf.BertLMHeadModel(cfg)
    ours.load_canonical_state_dict(state)
    theirs = torch_backend.BertLMHeadModel(cfg)
    theirs.load_canonical_state_dict(state)
    prompt = np.array([[5, 17, 42, 3]], np.int64)
    np.testing.assert_array_equal(ours.generate(prompt, max_new_tokens=8),
                                  np.asarray(theirs.generate(prompt, max_new_tokens=8)))


def test_fully_masked_row_is_defined():
    cfg = tiny_config("absolute")
    model = bert_tf.BertModel(cfg)
    inp = random_inputs(cfg, "BertModel", labels=False)
    inp["attention_mask"][0] = 0
    out = model(**inp, output_attentions=True)
    assert np.isfinite(out.last_hidden_state.numpy()).all()
    probs = out.attentions[0].numpy()[0]                                         # (N, S, K): uniform
    np.testing.assert_allclose(probs, 1.0 / probs.shape[-1], rtol=1e-6)


def _ce(logits, labels, ignore=-100):
    logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    labels = labels.reshape(-1)
    keep = labels != ignore
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse - logits[np.arange(len(labels)), np.where(keep, labels, 0)]
    return (nll * keep).sum() / keep.sum()


def test_losses_follow_hf_semantics():
    cfg = tiny_config("absolute", num_labels=2)
    qa = bert_tf.BertForQuestionAnswering(cfg, seed=1)
    inp = random_inputs(cfg, "BertForQuestionAnswering")                         # one end position > S
    out = qa(**inp)
    S = inp["input_ids"].shape[1]
    start, end = (np.clip(inp[k], 0, S) for k in ("start_positions", "end_positions"))
    want = (_ce(out.start_logits.numpy(), np.where(start == S, -100, start))
            + _ce(out.end_logits.numpy(), np.where(end == S, -100, end))) / 2
    assert abs(float(out.loss) - want) <= 1e-5
    clf = bert_tf.BertForSequenceClassification(cfg, seed=1)
    base = random_inputs(cfg, "BertForSequenceClassification", labels=False)
    logits = clf(**base).logits.numpy().astype(np.float64)
    multi = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)                       # float labels -> BCE
    bce = np.mean(np.maximum(logits, 0) - logits * multi + np.log1p(np.exp(-np.abs(logits))))
    assert abs(float(clf(**base, labels=multi).loss) - bce) <= 1e-6
    reg = bert_tf.BertForSequenceClassification(cfg.replace(num_labels=1), seed=1)
    y = np.array([0.5, -1.0], np.float32)
    assert abs(float(reg(**base, labels=y).loss) - np.mean((reg(**base).logits.numpy()[:, 0] - y) ** 2)) <= 1e-6
    mlm = bert_tf.BertForMaskedLM(cfg)
    ignored = np.full_like(base["input_ids"], -100)
    assert np.isnan(float(mlm(**base, labels=ignored).loss))                     # 0/0, as in HF
    with pytest.raises(ValueError, match="num_labels=2"):
        bert_tf.BertForQuestionAnswering(tiny_config("absolute"))


def test_multiple_choice_shapes_and_loss():
    cfg = tiny_config("absolute")
    mc = bert_tf.BertForMultipleChoice(cfg, seed=2)
    inp = random_inputs(cfg, "BertForMultipleChoice")
    out = mc(**inp)
    assert out.logits.shape == (2, 3)
    assert abs(float(out.loss) - _ce(out.logits.numpy(), inp["labels"])) <= 1e-5


@pytest.mark.parametrize("policy,atol,loss_rtol", [("mixed_float16", 5e-3, 1e-3), ("mixed_bfloat16", 5e-2, 1e-2)])
def test_mixed_precision_close_to_fp32(policy, atol, loss_rtol):
    cfg = tiny_config("relative_key")
    state = random_weights(cfg, "BertForMaskedLM", seed=8)
    ref, half = bert_tf.BertForMaskedLM(cfg), bert_tf.BertForMaskedLM(cfg, dtype=policy)
    ref.load_canonical_state_dict(state)
    half.load_canonical_state_dict(state)
    inp = random_inputs(cfg, "BertForMaskedLM")
    inp["attention_mask"][0] = 0                                                 # fp32 mask: no -inf, no NaN
    a, b = half(**inp), ref(**inp)
    assert a.logits.dtype == policy.split("_")[1]
    assert half.bert.embeddings.word_embeddings.embeddings.dtype == "float32"   # fp32 master weights
    keep = inp["attention_mask"].astype(bool)
    diff = np.abs(a.logits.numpy().astype(np.float32) - b.logits.numpy())[keep].max()
    assert diff <= atol * np.abs(b.logits.numpy()).max()
    assert np.isfinite(a.logits.numpy().astype(np.float32)).all()
    assert a.loss.dtype == tf.float32 and abs(float(a.loss) - float(b.loss)) <= loss_rtol * float(b.loss)


@pytest.mark.slow
def test_wrong_keras_backend_fails_at_import_with_fix():
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", "import bert_tf"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "KERAS_BACKEND='numpy'" in proc.stderr and "KERAS_BACKEND=tensorflow" in proc.stderr
