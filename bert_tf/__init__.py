"""bert_tf: BERT for TensorFlow 2 with Keras 3 (TensorFlow backend).

Exports the ten public names of every bertrio backend plus Hugging Face's ``TFBert…`` aliases, both built
from the one list in ``bert_common.semantics``. ``TFBertTokenizer`` (the in-graph tokenizer) loads lazily
from ``bert_tf.tokenizer``.
"""
from __future__ import annotations

from bert_common import semantics as _semantics
from bert_common.config import BertConfig
from bert_tf import modeling as _modeling
from bert_tf.modeling import MODEL_CLASSES, build, export_saved_model, serving_fn

_EXPORTS = _semantics.exports("tf", vars(_modeling))
globals().update(_EXPORTS)
__all__ = ["BertConfig", *_EXPORTS, "MODEL_CLASSES", "build", "TFBertTokenizer", "export_saved_model",
           "serving_fn"]


def __getattr__(name: str):
    # The tokenizer is written separately and is built from the shared tokenizer spec (core TF ops); load it only on use.
    if name == "TFBertTokenizer":
        from bert_tf.tokenizer import TFBertTokenizer
        return TFBertTokenizer
    raise AttributeError(f"module 'bert_tf' has no attribute {name!r}")
