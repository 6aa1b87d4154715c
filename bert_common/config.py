"""One BERT configuration, read and written as Hugging Face ``config.json``.

``BertConfig`` holds every field Hugging Face's BERT config has, validates on construction (errors name
the field), and keeps keys it does not know so that ``from_dict(d).to_dict()`` loses nothing.
Every number a framework default would otherwise pick (LayerNorm epsilon, GELU variant, initializer
range) is an explicit field here and every backend passes it explicitly.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping

from bert_common.io_utils import atomic_write_text

CONFIG_NAME = "config.json"

# hidden_act -> GELU variant. "exact" = x * Phi(x) with erf; "tanh" = the tanh approximation.
ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")

# name -> default. Order is the order written to config.json (after HF's generic keys).
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "use_cache": True,
    "classifier_dropout": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "problem_type": None,
    "id2label": None,  # filled from num_labels
    "label2id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "chunk_size_feed_forward": 0,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "attn_implementation": None,  # None -> backend default ("sdpa" in torch)
    "gradient_checkpointing": False,
    "model_type": "bert",
}
_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size")
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Keys HF writes that we never need to round-trip as attributes of their own; they survive in `extra`.
_HF_ATTN_KEY = "_attn_implementation"


class BertConfig:
    """Configuration of a BERT model; attribute names and meanings are Hugging Face's.

    ``BertConfig(hidden_size=32, ...)`` validates at once and raises ``ValueError`` naming the field.
    Unknown keyword arguments are kept in ``self.extra`` and written back by ``to_dict``.
    """

    def __init__(self, num_labels: int | None = None, **kwargs: Any):
        values = dict(_DEFAULTS)
        if _HF_ATTN_KEY in kwargs and kwargs.get("attn_implementation") is None:
            kwargs["attn_implementation"] = kwargs.pop(_HF_ATTN_KEY)
        extra = {}
        for key, value in kwargs.items():
            if key in values:
                values[key] = value
            else:
                extra[key] = value
        for key, value in values.items():
            setattr(self, key, value)
        self.extra: dict[str, Any] = extra
        # Labels: id2label wins over num_labels (HF's precedence); JSON keys are strings.
        if self.id2label is not None:
            if not isinstance(self.id2label, Mapping):
                raise ValueError(f"id2label must be a mapping from int to str, got {type(self.id2label).__name__}")
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(f"num_labels={num_labels} disagrees with id2label, which has "
                                 f"{len(self.id2label)} entries")
        else:
            n = 2 if num_labels is None else num_labels
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"num_labels must be a positive int, got {n!r}")
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_labels must be a positive int, got {n!r}")
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        """D = hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def gelu_variant(self) -> str:
        """One of ``gelu_exact``, ``gelu_tanh``, ``relu``, ``silu``, ``tanh`` (see ``ACTIVATIONS``)."""
        return ACTIVATIONS[self.hidden_act]

    @property
    def is_relative(self) -> bool:
        return self.position_embedding_type in ("relative_key", "relative_key_query")

    @property
    def classifier_dropout_prob(self) -> float:
        """Dropout before classification heads: ``classifier_dropout`` or ``hidden_dropout_prob``."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of its domain."""
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"BertConfig.position_embedding_type={self.position_embedding_type!r} is not one "
                             f"of {list(POSITION_EMBEDDING_TYPES)}")
        for name in _PROBABILITIES:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ValueError(f"BertConfig.{name} must be a float in [0, 1), got {v!r}")
        if self.classifier_dropout is not None and not 0.0 <= float(self.classifier_dropout) < 1.0:
            raise ValueError(f"BertConfig.classifier_dropout must be None or in [0, 1), got "
                             f"{self.classifier_dropout!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}")
        if not isinstance(self.initializer_range, (int, float)) or not self.initializer_range > 0:
            raise ValueError(f"BertConfig.initializer_range must be a positive float, got "
                             f"{self.initializer_range!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"BertConfig.problem_type={self.problem_type!r} is not one of {list(PROBLEM_TYPES)}")
        if self.attn_implementation not in (None,) + ATTN_IMPLEMENTATIONS:
            raise ValueError(f"BertConfig.attn_implementation={self.attn_implementation!r} is not one of "
                             f"{list(ATTN_IMPLEMENTATIONS)}")
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("BertConfig.add_cross_attention=True requires is_decoder=True")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id={self.pad_token_id} is outside [0, vocab_size="
                             f"{self.vocab_size})")
        if self.chunk_size_feed_forward not in (0, None):
            # Chunking changes nothing numerically; we do not implement it, so say so instead of ignoring it.
            raise ValueError(f"BertConfig.chunk_size_feed_forward={self.chunk_size_feed_forward} is not "
                             f"supported (only 0)")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "BertConfig":
        d = dict(d)
        if "num_labels" in overrides and "id2label" not in overrides:
            # An explicit num_labels replaces the stored label names (HF's from_pretrained(num_labels=...)).
            d.pop("id2label", None)
            d.pop("label2id", None)
        d.update(overrides)
        num_labels = d.pop("num_labels", None)
        if d.get("id2label") is not None:
            num_labels = None  # id2label decides
        return cls(num_labels=num_labels, **d)

    def to_dict(self) -> dict[str, Any]:
        """HF-compatible dict: every known field, then every unknown key that came in."""
        out: dict[str, Any] = {}
        for key in _DEFAULTS:
            value = getattr(self, key)
            if key == "id2label":
                value = {str(k): v for k, v in value.items()}
            if key == "attn_implementation" and value is None:
                continue
            out[key] = copy.deepcopy(value)
        for key, value in self.extra.items():
            out[key] = copy.deepcopy(value)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "BertConfig":
        """Read ``path/config.json`` (or ``path`` itself when it is a file). A directory without
        ``config.json`` but with Google's ``bert_config.json`` (original TF1 releases) uses that."""
        path = os.fspath(path)
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file) and os.path.isfile(os.path.join(path, "bert_config.json")):
            file = os.path.join(path, "bert_config.json")
        if not os.path.isfile(file) and os.path.isdir(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
        cfg = cls.from_json_file(file)
        if overrides:
            cfg = cls.from_dict(cfg.to_dict(), **overrides)
        return cfg

    def save_pretrained(self, path: str | os.PathLike) -> str:
        """Write ``path/config.json`` atomically; returns the file path."""
        os.makedirs(path, exist_ok=True)
        file = os.path.join(os.fspath(path), CONFIG_NAME)
        atomic_write_text(file, self.to_json_string())
        return file

    def replace(self, **changes: Any) -> "BertConfig":
        """A validated copy with some fields changed."""
        return BertConfig.from_dict(self.to_dict(), **changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "position_embedding_type", "is_decoder", "add_cross_attention")
        return "BertConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"
