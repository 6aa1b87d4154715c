"""bertrio's Flax (Linen) backend: the ten public names plus Hugging Face's Flax aliases, both built from
the one list in ``bert_common.semantics``.

``from bert_flax import BertModel``; ``FlaxBertModel`` is the same class (``FlaxBertForCausalLM`` is
``BertLMHeadModel``). Imports jax / flax only.
"""
from bert_common import semantics as _semantics
from bert_common.config import BertConfig
from bert_flax import modeling as _modeling
from bert_flax.modeling import CHECK_MODES, MODEL_CLASSES, build

_EXPORTS = _semantics.exports("flax", vars(_modeling))
globals().update(_EXPORTS)
__all__ = ["BertConfig", *_EXPORTS, "MODEL_CLASSES", "CHECK_MODES", "build"]
