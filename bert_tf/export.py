"""SavedModel export of a ``bert_tf`` model: the one builder behind ``bertrio export --to saved-model``
(``export``, see docs/export.md) and the Python helpers ``export_saved_model`` / ``serving_fn``.

The SavedModel has a ``serving_default`` signature over ``input_ids``, ``attention_mask``,
``token_type_ids`` with dynamic batch and sequence axes ([None, None], or [None, None, None] for multiple
choice), returning the head's output tensors by name. With a tokenizer, the in-graph ``TFBertTokenizer``
is saved too and a ``serving_text`` signature takes ``text`` (B,) strings and returns the same outputs:
TF Serving needs no Python tokenizer.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF

FILE = "saved_model"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the order of the signature's arguments


def _flags(model) -> dict:
    """Heads that can cache (BertModel, BertLMHeadModel) must not build one in the signature."""
    fields = OUTPUT_FIELDS[OUTPUT_OF[model.model_class]]
    return {"use_cache": False} if "past_key_values" in fields else {}


def _rank(model) -> int:
    """Input rank: (B, S), or (B, C, S) for multiple choice."""
    return 3 if model.model_class == "BertForMultipleChoice" else 2


def _probe_outputs(model, wanted: Sequence[str]) -> list[str]:
    """The ``wanted`` output fields the model returns (a model without a pooler has no pooler_output)."""
    ids = np.ones((1, 2, 4)[-_rank(model):], np.int32)
    out = model(input_ids=ids, attention_mask=ids, token_type_ids=np.zeros_like(ids), training=False,
                return_dict=True, **_flags(model))
    return [k for k in wanted if out.get(k) is not None]


def _signature(model, int_dtype: tf.DType, outputs: Sequence[str] | None) -> tf.types.experimental.GenericFunction:
    """A ``tf.function`` over the three inputs, each [None] * rank in ``int_dtype``, returning
    {name: tensor} for ``outputs`` (None: every tensor field of the output)."""
    signature = [tf.TensorSpec([None] * _rank(model), int_dtype, name=name) for name in INPUT_NAMES]
    flags = _flags(model)

    @tf.function(input_signature=signature)
    def serve(input_ids, attention_mask, token_type_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    training=False, return_dict=True, **flags)
        if outputs is None:
            return {k: v for k, v in out.items() if isinstance(v, tf.Tensor)}
        return {k: out[k] for k in outputs}

    return serve


def _save(model, directory: str, serve, int_dtype: tf.DType, tokenizer: Callable | None) -> list[str]:
    """Write the SavedModel of ``serve`` (and ``serving_text`` over ``tokenizer``) to ``directory``; returns
    the signature names."""
    module = tf.Module()
    module.weights_ = [v.value for v in model.named_variables().values()]  # tracked, so saved once
    module.serve = serve
    signatures = {"serving_default": serve}
    if tokenizer is not None:
        module.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            enc = module.tokenizer(text)
            return module.serve(*(tf.cast(enc[name], int_dtype) for name in INPUT_NAMES))

        module.serve_text = serve_text
        signatures["serving_text"] = serve_text
    tf.saved_model.save(module, directory, signatures=signatures)
    return list(signatures)


def serving_fn(model, int_dtype=tf.int32) -> tf.types.experimental.GenericFunction:
    """A ``tf.function`` with signature (input_ids, attention_mask, token_type_ids) each (None, None) int
    ((None, None, None) for multiple choice), returning a plain dict of the model's output tensors."""
    return _signature(model, tf.as_dtype(int_dtype), None)


def export_saved_model(model, path, tokenizer=None, int_dtype=tf.int32) -> str:
    """Write a SavedModel to ``path`` whose ``serving_default`` is ``serving_fn(model, int_dtype)``.

    With ``tokenizer`` (a ``bert_tf.TFBertTokenizer`` or any callable mapping a (B,) tf.string tensor to a
    dict with the three input keys) a second signature ``serving_text`` takes ``text`` (B,) strings.
    Reload with ``tf.saved_model.load(path).signatures["serving_default"]``. Returns ``path``.
    """
    int_dtype = tf.as_dtype(int_dtype)
    _save(model, os.fspath(path), _signature(model, int_dtype, None), int_dtype, tokenizer)
    return os.fspath(path)


def serving_signature(model, spec: Mapping, outputs: list[str]) -> tf.types.experimental.GenericFunction:
    """The artifact's signature: over ``spec["inputs"]`` in ``spec["input_dtype"]``, returning ``outputs``."""
    if tuple(spec["inputs"]) != INPUT_NAMES:
        raise ValueError(f"spec inputs {list(spec['inputs'])} are not {list(INPUT_NAMES)}")
    return _signature(model, tf.as_dtype(spec["input_dtype"]), outputs)


def export(model, path: str | os.PathLike, spec: Mapping, *, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """Write ``path/saved_model`` for ``model`` (a ``bert_tf`` model, any head and dtype policy).

    ``spec`` (``bert_common.cli.export.artifact_spec``): ``inputs``, ``input_dtype`` ("int64" or "int32")
    and ``outputs``. ``tokenizer_dir``: a checkpoint directory with ``vocab.txt`` (and optionally
    ``tokenizer_config.json``); adds the ``serving_text`` signature, (B,) strings -> the same outputs.
    Returns {"file", "outputs", "signatures"} for the sidecar.
    """
    outputs = _probe_outputs(model, spec["outputs"])
    tokenizer = None
    if tokenizer_dir is not None:
        from bert_tf.tokenizer import TFBertTokenizer
        tokenizer = TFBertTokenizer.from_pretrained(tokenizer_dir)
    signatures = _save(model, os.path.join(os.fspath(path), FILE), serving_signature(model, spec, outputs),
                       tf.as_dtype(spec["input_dtype"]), tokenizer)
    return {"file": FILE, "outputs": outputs, "signatures": signatures}


__all__ = ["export", "export_saved_model", "serving_fn", "serving_signature", "FILE"]
