"""bertrio's framework-free core: config, weights, checkpoints, tokenizers, backend selection, CLI.

Importing this package imports no deep-learning framework.
"""
from __future__ import annotations

from bert_common.backend import get_backend, installed_backends, set_backend
from bert_common.config import BertConfig
from bert_common.outputs import ModelOutput

__version__ = "0.1.0"
__all__ = ["BertConfig", "ModelOutput", "get_backend", "installed_backends", "set_backend",
           "BertTokenizer", "BertTokenizerFast", "__version__"]

# Tokenizers load lazily: the fast one imports the `tokenizers` library.
_LAZY = {"BertTokenizer": "bert_common.tokenizers.python", "BertTokenizerFast": "bert_common.tokenizers.fast"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bert_common' has no attribute {name!r}")
