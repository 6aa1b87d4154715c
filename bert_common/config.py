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
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "varlen")

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
# The type of every documented field (and of the HF keys we read from ``extra``): a JSON value of another
# type is refused naming the field, the value and the expected type. "float" accepts ints; bools are never
# numbers here (JSON ``true`` is not 1).
_INT, _FLOAT, _STR, _BOOL, _MAP, _LIST = "int", "float", "str", "bool", "mapping", "list of str"
FIELD_TYPES: dict[str, tuple[str, bool]] = {  # field -> (type, None allowed)
    "vocab_size": (_INT, False), "hidden_size": (_INT, False), "num_hidden_layers": (_INT, False),
    "num_attention_heads": (_INT, False), "intermediate_size": (_INT, False), "hidden_act": (_STR, False),
    "hidden_dropout_prob": (_FLOAT, False), "attention_probs_dropout_prob": (_FLOAT, False),
    "max_position_embeddings": (_INT, False), "type_vocab_size": (_INT, False),
    "initializer_range": (_FLOAT, False), "layer_norm_eps": (_FLOAT, False), "pad_token_id": (_INT, True),
    "position_embedding_type": (_STR, False), "use_cache": (_BOOL, False), "classifier_dropout": (_FLOAT, True),
    "is_decoder": (_BOOL, False), "add_cross_attention": (_BOOL, False), "tie_word_embeddings": (_BOOL, False),
    "problem_type": (_STR, True), "id2label": (_MAP, True), "label2id": (_MAP, True),
    "bos_token_id": (_INT, True), "eos_token_id": (_INT, True), "chunk_size_feed_forward": (_INT, True),
    "output_attentions": (_BOOL, False), "output_hidden_states": (_BOOL, False), "return_dict": (_BOOL, False),
    "attn_implementation": (_STR, True), "gradient_checkpointing": (_BOOL, False), "model_type": (_STR, False),
    "num_labels": (_INT, True), "architectures": (_LIST, True), "torch_dtype": (_STR, True),
}
_CHECKS = {
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _FLOAT: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    _STR: lambda v: isinstance(v, str),
    _BOOL: lambda v: isinstance(v, bool),
    _MAP: lambda v: isinstance(v, Mapping),
    _LIST: lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
}
# Caps on config.json: a hostile file is refused before it costs time or memory.
MAX_CONFIG_BYTES = 4 * 2**20
MAX_CONFIG_DEPTH = 32


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_types(values: Mapping[str, Any]) -> None:
    """ValueError naming the first documented field whose value has the wrong type."""
    for key, value in values.items():
        spec = FIELD_TYPES.get(key)
        if spec is None or (value is None and spec[1]):
            continue
        if not _CHECKS[spec[0]](value):
            raise ValueError(f"BertConfig.{key}={_short(value)} has type {type(value).__name__}; expected "
                             f"{spec[0]}{' or None' if spec[1] else ''}")


def _json_depth(text: str) -> int:
    """Deepest nesting of JSON ``text`` (brackets outside strings), without parsing it."""
    import re
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


# Keys HF writes that we never need to round-trip as attributes of their own; they survive in `extra`.
_HF_ATTN_KEY = "_attn_implementation"


def _label_id(key: Any, field: str) -> int:
    """A label id: an int, or a string of one (JSON object keys are strings)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    raise ValueError(f"BertConfig.{field} has label id {_short(key)}; expected an int (or a string of one)")


def _label_name(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"BertConfig.{field} has label name {_short(value)} of type {type(value).__name__}; "
                         f"expected str")
    return value


class BertConfig:
    """Configuration of a BERT model; attribute names and meanings are Hugging Face's.

    ``BertConfig(hidden_size=32, ...)`` validates at once and raises ``ValueError`` naming the field.
    Unknown keyword arguments are kept in ``self.extra`` and written back by ``to_dict``.
    """

    def __init__(self, num_labels: int | None = None, **kwargs: Any):
        check_types({**kwargs, "num_labels": num_labels})
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
            self.id2label = {_label_id(k, "id2label"): _label_name(v, "id2label") for k, v in self.id2label.items()}
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
            self.label2id = {_label_name(k, "label2id"): _label_id(v, "label2id") for k, v in self.label2id.items()}
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
        c = self.chunk_size_feed_forward
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 0):
            raise ValueError(f"BertConfig.chunk_size_feed_forward must be an int >= 0 (0 = no chunking), got {c!r}")

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
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: config is over the cap of {MAX_CONFIG_BYTES} bytes (MAX_CONFIG_BYTES)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = raw[e.start:e.start + 1]
            raise ValueError(f"{path}: config is not UTF-8 text (byte {e.start}: {bad!r})") from None
        depth = _json_depth(text)
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"{path}: config nests {depth} deep, over the cap of {MAX_CONFIG_DEPTH} "
                             f"(MAX_CONFIG_DEPTH)")
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
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
