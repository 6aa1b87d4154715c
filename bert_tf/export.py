"""SavedModel export of a ``bert_tf`` model (``bertrio export --to saved-model``; see docs/export.md).

The SavedModel (``OUT/saved_model``) has a ``serving_default``
signature over ``input_ids``, ``attention_mask``, ``token_type_ids`` with dynamic batch and sequence axes
([None, None], or [None, None, None] for multiple choice), returning the head's output fields by name.
With a tokenizer directory, the in-graph ``TFBertTokenizer`` is saved too and a ``serving_text`` signature
takes ``text`` (B,) strings and returns the same outputs: TF Serving needs no Python tokenizer.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import tensorflow as tf

from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF

FILE = "saved_model"


def _flags(model) -> dict:
    """Heads that can cache (BertModel, BertLMHeadModel) must not build one in the signature."""
    fields = OUTPUT_FIELDS[OUTPUT_OF[model.model_class]]
    return {"use_cache": False} if "past_key_values" in fields else {}


def _probe_outputs(model, spec: Mapping) -> list[str]:
    """The spec's output fields the model returns (a model without a pooler has no pooler_output)."""
    shape = (1, 2, 4) if len(next(iter(spec["inputs"].values()))) == 3 else (1, 4)
    ids = np.ones(shape, np.int32)
    out = model(input_ids=ids, attention_mask=ids, token_type_ids=np.zeros_like(ids), training=False,
                return_dict=True, **_flags(model))
    return [k for k in spec["outputs"] if out.get(k) is not None]


def serving_signature(model, spec: Mapping, outputs: list[str]) -> tf.types.experimental.GenericFunction:
    """A ``tf.function`` over ``spec["inputs"]`` (each [None, None], or [None, None, None] for multiple
    choice, in ``spec["input_dtype"]``) returning {output name: tensor} for ``outputs``."""
    int_dtype = tf.as_dtype(spec["input_dtype"])
    signature = [tf.TensorSpec([None] * len(axes), int_dtype, name=name) for name, axes in spec["inputs"].items()]
    flags = _flags(model)

    @tf.function(input_signature=signature)
    def serve(input_ids, attention_mask, token_type_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    training=False, return_dict=True, **flags)
        return {k: out[k] for k in outputs}

    return serve


def export(model, path: str | os.PathLike, spec: Mapping, *, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """Write ``path/saved_model`` for ``model`` (a ``bert_tf`` model, any head and dtype policy).

    ``spec`` (``bert_common.cli.export.artifact_spec``): ``inputs``, ``input_dtype`` ("int64" or "int32")
    and ``outputs``. ``tokenizer_dir``: a checkpoint directory with ``vocab.txt`` (and optionally
    ``tokenizer_config.json``); adds the ``serving_text`` signature, (B,) strings -> the same outputs.
    Returns {"file", "outputs", "signatures"} for the sidecar.
    """
    outputs = _probe_outputs(model, spec)
    module = tf.Module()
    module.weights_ = [v.value for v in model.named_variables().values()]  # tracked, so saved once
    module.serve = serving_signature(model, spec, outputs)
    signatures = {"serving_default": module.serve}
    if tokenizer_dir is not None:
        from bert_tf.tokenizer import TFBertTokenizer
        module.tokenizer = TFBertTokenizer.from_pretrained(tokenizer_dir)
        int_dtype = tf.as_dtype(spec["input_dtype"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            enc = module.tokenizer(text)
            return module.serve(*(tf.cast(enc[name], int_dtype) for name in spec["inputs"]))

        module.serve_text = serve_text
        signatures["serving_text"] = serve_text
    tf.saved_model.save(module, os.path.join(os.fspath(path), FILE), signatures=signatures)
    return {"file": FILE, "outputs": outputs, "signatures": list(signatures)}


__all__ = ["export", "serving_signature", "FILE"]
