"""Tokenizers: one character spec (``spec``), one shared API (``api``), two implementations.

``python.BertTokenizer`` is pure Python (no dependency); ``fast.BertTokenizerFast`` runs on the
``tokenizers`` library. Both produce exactly Hugging Face's fast tokenizer's ids. The implementations
load lazily so that importing this package costs nothing.
"""
from __future__ import annotations

import importlib

_LAZY = {"BertTokenizer": "bert_common.tokenizers.python", "BertTokenizerFast": "bert_common.tokenizers.fast"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bert_common.tokenizers' has no attribute {name!r}")
