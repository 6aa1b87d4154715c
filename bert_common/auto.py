"""The selected backend's classes under their common names.

``from bert_common.auto import BertForSequenceClassification`` returns the class of the backend chosen
by ``BERT_BACKEND`` / ``bert_common.set_backend`` (resolved on first attribute access).
"""
from __future__ import annotations

from bert_common.backend import backend_module
from bert_common.semantics import PUBLIC_NAMES

__all__ = list(PUBLIC_NAMES)


def __getattr__(name: str):
    if name in PUBLIC_NAMES:
        return getattr(backend_module(), name)
    raise AttributeError(f"module 'bert_common.auto' has no attribute {name!r}")
