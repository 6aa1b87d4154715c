"""PyTorch BERT (``torch.nn.Module``s named like the canonical checkpoint). See docs/torch.md.

Exports the ten public names of every bertrio backend (``bert_common.semantics.PUBLIC_NAMES``, built from
that one list), ``BertPreTrainedModel`` and ``MODEL_CLASSES``.
"""
from bert_common import semantics as _semantics
from bert_common.config import BertConfig
from bert_torch import modeling as _modeling
from bert_torch.modeling import MODEL_CLASSES

globals().update(_semantics.exports("torch", vars(_modeling)))
__all__ = ["BertConfig", *_semantics.exports("torch", vars(_modeling)), "MODEL_CLASSES"]
