"""SavedModel serving for ``bert_tf`` models (plumbing kept out of ``modeling.py``)."""
from __future__ import annotations

import os

import tensorflow as tf

from bert_common.semantics import call_args


def serving_fn(model, int_dtype=tf.int32):
    """A ``tf.function`` with signature (input_ids, attention_mask, token_type_ids) each (None, None) int,
    returning a plain dict of the model's tensors (dynamic batch and sequence length)."""
    spec = [tf.TensorSpec([None, None], int_dtype, name=n) for n in ("input_ids", "attention_mask", "token_type_ids")]
    if model.model_class == "BertForMultipleChoice":
        spec = [tf.TensorSpec([None, None, None], int_dtype, name=s.name) for s in spec]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask, token_type_ids):
        # Serving never caches; only the classes that can cache take the flag (bert_common.semantics).
        flags = {"use_cache": False} if "use_cache" in call_args(model.model_class) else {}
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    training=False, return_dict=True, **flags)
        return {k: v for k, v in out.items() if isinstance(v, tf.Tensor)}

    return serve


def export_saved_model(model, path, tokenizer=None, int_dtype=tf.int32) -> str:
    """Write a SavedModel whose ``serving_default`` takes ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (None, None) int and returns the output tensors by name.

    With ``tokenizer`` (a ``bert_tf.TFBertTokenizer`` or any callable mapping a (B,) tf.string tensor to a
    dict with those three keys) a second signature ``serving_text`` takes ``text`` (B,) strings.
    Reload with ``tf.saved_model.load(path).signatures["serving_default"]``.
    """
    path = os.fspath(path)
    module = tf.Module()
    module.variables_ = [v.value for v in model.named_variables().values()]
    serve = serving_fn(model, int_dtype)
    module.serve = serve
    signatures = {"serving_default": serve}
    if tokenizer is not None:
        module.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            enc = tokenizer(text)
            return serve(tf.cast(enc["input_ids"], int_dtype), tf.cast(enc["attention_mask"], int_dtype),
                         tf.cast(enc["token_type_ids"], int_dtype))

        module.serve_text = serve_text
        signatures["serving_text"] = serve_text
    tf.saved_model.save(module, path, signatures=signatures)
    return path
