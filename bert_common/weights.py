"""Canonical weight names, the head table, and the per-backend naming schemes — all as data.

Canonical names and layouts are those of Hugging Face PyTorch state dicts (``model.safetensors``):
``encoder.layer.{i}.attention.self.query.weight`` is [out, in]; head models prefix the encoder with
``bert.``. A *naming scheme* (``SCHEMES``) says how another framework or file format spells each canonical
tensor: a path separator, a leaf name per tensor kind (with a transpose flag), regex renames of module
paths, and exact overrides. One generic pair of functions, ``to_scheme`` / ``from_scheme``, applies a
scheme with strict checking (every tensor used once, every variable filled once). Backends and file
readers carry no renaming code of their own.

Shape legend: V vocab, P max positions, T type vocab, H hidden, I intermediate, D head dim, L labels.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np

from bert_common.config import BertConfig

# ---------------------------------------------------------------------------------------------- heads
# What each public class adds on top of the encoder. ``parts`` name the head blocks in HEAD_PARTS.
@dataclasses.dataclass(frozen=True)
class HeadSpec:
    prefix: str            # "" for BertModel, "bert." for heads
    pooler: bool           # does the class build the pooler (HF's add_pooling_layer default)
    parts: tuple[str, ...]  # head blocks, see _head_part_shapes


HEADS: dict[str, HeadSpec] = {
    "BertModel": HeadSpec("", True, ()),
    "BertForPreTraining": HeadSpec("bert.", True, ("mlm", "nsp")),
    "BertLMHeadModel": HeadSpec("bert.", False, ("mlm",)),
    "BertForMaskedLM": HeadSpec("bert.", False, ("mlm",)),
    "BertForNextSentencePrediction": HeadSpec("bert.", True, ("nsp",)),
    "BertForSequenceClassification": HeadSpec("bert.", True, ("classifier",)),
    "BertForMultipleChoice": HeadSpec("bert.", True, ("choice",)),
    "BertForTokenClassification": HeadSpec("bert.", False, ("classifier",)),
    "BertForQuestionAnswering": HeadSpec("bert.", False, ("qa",)),
}
MODEL_CLASSES = tuple(HEADS)

# Buffers some checkpoints carry; never parameters.
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_ENCODER_NAMESPACES = ("embeddings.", "encoder.", "pooler.")
EMBEDDING_MODULES = ("word_embeddings", "position_embeddings", "token_type_embeddings", "distance_embedding")


def _encoder_shapes(c: BertConfig, pooler: bool) -> dict[str, tuple[int, ...]]:
    H, I, D = c.hidden_size, c.intermediate_size, c.head_dim
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, H),
        # HF always builds position_embeddings (also for relative models, where it is unused).
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    attn = ["attention"] + (["crossattention"] if c.add_cross_attention else [])
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for a in attn:
            for proj in ("query", "key", "value"):
                s[f"{p}{a}.self.{proj}.weight"] = (H, H)
                s[f"{p}{a}.self.{proj}.bias"] = (H,)
            # Cross-attention is always absolute in HF BERT, so only self-attention owns distances.
            if c.is_relative and a == "attention":
                s[f"{p}{a}.self.distance_embedding.weight"] = (2 * c.max_position_embeddings - 1, D)
            s[f"{p}{a}.output.dense.weight"] = (H, H)
            s[f"{p}{a}.output.dense.bias"] = (H,)
            s[f"{p}{a}.output.LayerNorm.weight"] = (H,)
            s[f"{p}{a}.output.LayerNorm.bias"] = (H,)
        s[f"{p}intermediate.dense.weight"] = (I, H)
        s[f"{p}intermediate.dense.bias"] = (I,)
        s[f"{p}output.dense.weight"] = (H, I)
        s[f"{p}output.dense.bias"] = (H,)
        s[f"{p}output.LayerNorm.weight"] = (H,)
        s[f"{p}output.LayerNorm.bias"] = (H,)
    if pooler:
        s["pooler.dense.weight"] = (H, H)
        s["pooler.dense.bias"] = (H,)
    return s


def _head_part_shapes(part: str, c: BertConfig) -> dict[str, tuple[int, ...]]:
    H, V = c.hidden_size, c.vocab_size
    if part == "mlm":
        s = {
            "cls.predictions.transform.dense.weight": (H, H),
            "cls.predictions.transform.dense.bias": (H,),
            "cls.predictions.transform.LayerNorm.weight": (H,),
            "cls.predictions.transform.LayerNorm.bias": (H,),
            "cls.predictions.bias": (V,),
        }
        if not c.tie_word_embeddings:
            s["cls.predictions.decoder.weight"] = (V, H)
        return s
    if part == "nsp":
        return {"cls.seq_relationship.weight": (2, H), "cls.seq_relationship.bias": (2,)}
    if part == "classifier":
        return {"classifier.weight": (c.num_labels, H), "classifier.bias": (c.num_labels,)}
    if part == "choice":
        return {"classifier.weight": (1, H), "classifier.bias": (1,)}
    if part == "qa":
        return {"qa_outputs.weight": (c.num_labels, H), "qa_outputs.bias": (c.num_labels,)}
    raise KeyError(part)


def head_spec(model_class: str) -> HeadSpec:
    try:
        return HEADS[model_class]
    except KeyError:
        raise ValueError(f"model_class={model_class!r} is not one of {list(HEADS)}") from None


def canonical_shapes(config: BertConfig, model_class: str = "BertModel",
                     add_pooling_layer: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Ordered ``{canonical name: shape}`` of every parameter ``model_class`` owns (no tied aliases).

    Order follows the module tree: embeddings, encoder layers, pooler, head.
    """
    spec = head_spec(model_class)
    pooler = spec.pooler if add_pooling_layer is None else add_pooling_layer
    out = {spec.prefix + k: v for k, v in _encoder_shapes(config, pooler).items()}
    for part in spec.parts:
        out.update(_head_part_shapes(part, config))
    return out


def head_names(config: BertConfig, model_class: str) -> list[str]:
    """Canonical names that belong to the head (not to the ``bert.`` encoder)."""
    spec = head_spec(model_class)
    return [k for k in canonical_shapes(config, model_class) if spec.prefix == "" or not k.startswith(spec.prefix)]


def tied_aliases(config: BertConfig, model_class: str) -> dict[str, str]:
    """``{alias: source}`` for tensors that are the same parameter under two names."""
    spec = head_spec(model_class)
    if "mlm" not in spec.parts:
        return {}
    out = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
    if config.tie_word_embeddings:
        out["cls.predictions.decoder.weight"] = spec.prefix + "embeddings.word_embeddings.weight"
    return out


def no_weight_decay(canonical: str) -> bool:
    """BERT's AdamW convention: no weight decay on biases and LayerNorm weights."""
    return canonical.endswith(".bias") or ".LayerNorm." in canonical


def parameter_count(config: BertConfig, model_class: str = "BertModel") -> int:
    return int(sum(int(np.prod(s)) for s in canonical_shapes(config, model_class).values()))


# ---------------------------------------------------------------------------------------------- init
def init_weights(config: BertConfig, model_class: str = "BertModel", seed: int = 0,
                 add_pooling_layer: bool | None = None, dtype=np.float32) -> dict[str, np.ndarray]:
    """Fresh weights as HF initialises BERT: normal(0, initializer_range) for matrices and embeddings,
    zeros for biases, ones/zeros for LayerNorm. Deterministic in ``seed`` and identical for every backend.
    (HF also zeroes the padding row of word embeddings; we do the same.)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in canonical_shapes(config, model_class, add_pooling_layer).items():
        if ".LayerNorm.weight" in name:
            arr = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            arr = np.zeros(shape, np.float32)
        else:
            arr = rng.normal(0.0, config.initializer_range, size=shape).astype(np.float32)
            if name.endswith("word_embeddings.weight") and config.pad_token_id is not None:
                arr[config.pad_token_id] = 0.0
        out[name] = arr.astype(dtype)
    return out


# ---------------------------------------------------------------------------------------------- schemes
@dataclasses.dataclass(frozen=True)
class NamingScheme:
    """How one framework or file format spells canonical tensors.

    ``leaves``: tensor kind -> (leaf name, transpose). A leaf of ``None`` means the module path itself
    names the tensor (Google checkpoints: ``bert/embeddings/word_embeddings``).
    ``module_renames``: (regex, replacement) applied in order to the dotted module path.
    ``overrides``: canonical name -> (full path, transpose), bypassing the rules.
    ``suffix``: appended to every path (``:0`` for TF variable names in h5 files).
    """
    name: str
    sep: str
    leaves: Mapping[str, tuple[str | None, bool]]
    module_renames: tuple[tuple[str, str], ...] = ()
    overrides: Mapping[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    suffix: str = ""
    # (regex, replacement) applied in order to the joined path (before ``suffix``), for spellings that
    # contain the separator of the dotted module path (HF TF's ``layer_._0``).
    path_renames: tuple[tuple[str, str], ...] = ()


def tensor_kind(canonical: str) -> str:
    """``dense.weight``, ``dense.bias``, ``embedding``, ``norm.weight``, ``norm.bias`` or ``vector``."""
    module, _, leaf = canonical.rpartition(".")
    last = module.rpartition(".")[2]
    if last in EMBEDDING_MODULES:
        return "embedding"
    if last == "LayerNorm":
        return "norm." + leaf
    if leaf == "bias" and last == "predictions":
        return "vector"  # cls.predictions.bias: the MLM output bias, owned by the head itself
    return "dense." + leaf


_TORCH_LEAVES = {"dense.weight": ("weight", False), "dense.bias": ("bias", False), "embedding": ("weight", False),
                 "norm.weight": ("weight", False), "norm.bias": ("bias", False), "vector": ("bias", False)}
_FLAX_LEAVES = {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": ("embedding", False),
                "norm.weight": ("scale", False), "norm.bias": ("bias", False), "vector": ("bias", False)}
_KERAS_LEAVES = {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": ("embeddings", False),
                 "norm.weight": ("gamma", False), "norm.bias": ("beta", False), "vector": ("bias", False)}

SCHEMES: dict[str, NamingScheme] = {
    # Identity: the canonical layout itself.
    "torch": NamingScheme("torch", ".", _TORCH_LEAVES),
    # bert_flax parameter pytree, "/"-joined; identical to HF's flax_model.msgpack tree.
    "flax": NamingScheme("flax", "/", _FLAX_LEAVES),
    # bert_tf (Keras 3) variables, "/"-joined module path + Keras leaf names.
    "tf": NamingScheme("tf", "/", _KERAS_LEAVES),
}


def register_scheme(scheme: NamingScheme) -> None:
    """Add a scheme (file formats register theirs in ``bert_common.formats``)."""
    SCHEMES[scheme.name] = scheme


def get_scheme(name: str | NamingScheme) -> NamingScheme:
    if isinstance(name, NamingScheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"naming scheme {name!r} is not one of {sorted(SCHEMES)}") from None


def scheme_path(canonical: str, scheme: str | NamingScheme) -> tuple[str, bool]:
    """(path in ``scheme``, transpose?) for one canonical tensor name."""
    sc = get_scheme(scheme)
    if canonical in sc.overrides:
        path, transpose = sc.overrides[canonical]
        return path + sc.suffix, transpose
    module, _, _ = canonical.rpartition(".")
    leaf, transpose = sc.leaves[tensor_kind(canonical)]
    for pattern, repl in sc.module_renames:
        module = re.sub(pattern, repl, module)
    parts = module.split(".") + ([leaf] if leaf is not None else [])
    path = sc.sep.join(parts)
    for pattern, repl in sc.path_renames:
        path = re.sub(pattern, repl, path)
    return path + sc.suffix, transpose


class WeightMappingError(ValueError):
    """Raised when tensors and expected names do not correspond one-to-one; lists every offender."""

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [what]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing[:20])
                         + (" ..." if len(self.missing) > 20 else ""))
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected[:20])
                         + (" ..." if len(self.unexpected) > 20 else ""))
        if self.mismatched:
            lines.append(f"  wrong shape ({len(self.mismatched)}): " + ", ".join(
                f"{n} {tuple(got)} (expected {tuple(exp)})" for n, got, exp in self.mismatched[:20]))
        super().__init__("\n".join(lines))


def _transform(arr, transpose: bool):
    return np.ascontiguousarray(np.asarray(arr).T) if transpose else arr


def to_scheme(state: Mapping[str, np.ndarray], scheme: str | NamingScheme) -> dict[str, np.ndarray]:
    """Canonical ``{name: array}`` -> ``{scheme path: array}`` (transposed where the scheme says)."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, arr in state.items():
        path, transpose = scheme_path(name, scheme)
        if path in out:
            raise WeightMappingError(f"scheme {get_scheme(scheme).name!r} maps two tensors to {path!r}: "
                                     f"{origin[path]} and {name}")
        out[path], origin[path] = _transform(arr, transpose), name
    return out


def from_scheme(tensors: Mapping[str, np.ndarray], scheme: str | NamingScheme,
                expected: Mapping[str, tuple[int, ...]] | Iterable[str]) -> dict[str, np.ndarray]:
    """``{scheme path: array}`` -> canonical ``{name: array}`` for exactly the ``expected`` names.

    ``expected`` is ``canonical_shapes(...)`` (shapes are then checked after transposition) or a list
    of names. Raises ``WeightMappingError`` listing every missing, unexpected and mis-shaped tensor.
    """
    shapes = dict(expected) if isinstance(expected, Mapping) else {n: None for n in expected}
    inverse = {}
    for name in shapes:
        path, transpose = scheme_path(name, scheme)
        inverse[path] = (name, transpose)
    missing = [inverse[p][0] for p in inverse if p not in tensors]
    unexpected = [p for p in tensors if p not in inverse]
    out, mismatched = {}, []
    for path, arr in tensors.items():
        if path not in inverse:
            continue
        name, transpose = inverse[path]
        arr = _transform(arr, transpose)
        if shapes[name] is not None and tuple(np.shape(arr)) != tuple(shapes[name]):
            mismatched.append((name, np.shape(arr), shapes[name]))
            continue
        out[name] = arr
    if missing or unexpected or mismatched:
        raise WeightMappingError(f"tensors do not match scheme {get_scheme(scheme).name!r}",
                                 missing, unexpected, mismatched)
    return {name: out[name] for name in shapes}


# ---------------------------------------------------------------------------------------------- loading
@dataclasses.dataclass
class LoadReport:
    """What happened when a state dict was matched against a model class."""
    model_class: str
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    initialized: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for field in ("missing", "unexpected", "mismatched", "initialized"):
            v = getattr(self, field)
            if v:
                parts.append(f"{field}: {len(v)}")
        return f"{self.model_class}: " + (", ".join(parts) if parts else "all tensors matched")


def match_state_dict(state: Mapping[str, np.ndarray], config: BertConfig, model_class: str = "BertModel",
                     add_pooling_layer: bool | None = None, allow_new_head: bool = False,
                     strict: bool = True, seed: int = 0) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Fit a canonical-named state dict to ``model_class``; returns (complete params, report).

    - drops the ``position_ids`` / ``token_type_ids`` buffers;
    - adds or strips the ``bert.`` prefix so base checkpoints load into heads and the reverse;
    - folds tied aliases (``cls.predictions.decoder.*``) onto their source (checking they agree);
    - head tensors absent from the checkpoint are freshly initialised only when ``allow_new_head``
      (listed in ``report.initialized``); any other missing, and every mis-shaped tensor, raises
      ``WeightMappingError`` naming them. Tensors the class does not use (e.g. ``cls.*`` when loading a
      pre-training checkpoint into ``BertModel``) are reported as ``unexpected``; with ``strict`` an
      unexpected *encoder* tensor raises.
    """
    spec = head_spec(model_class)
    expected = canonical_shapes(config, model_class, add_pooling_layer)
    aliases = tied_aliases(config, model_class)
    report = LoadReport(model_class)
    staged: dict[str, np.ndarray] = {}
    for name, arr in state.items():
        bare = name[5:] if name.startswith("bert.") else name
        if bare in IGNORED_BUFFERS:
            report.ignored.append(name)
            continue
        target = spec.prefix + bare if bare.startswith(_ENCODER_NAMESPACES) else name
        if target in staged:
            raise WeightMappingError(f"checkpoint holds {target} twice (with and without the 'bert.' prefix)")
        staged[target] = arr
    for alias, source in aliases.items():
        if alias in staged:
            arr = staged.pop(alias)
            if source in staged and (np.shape(arr) != np.shape(staged[source]) or not np.array_equal(
                    np.asarray(arr), np.asarray(staged[source]))):
                raise WeightMappingError(f"{alias} is tied to {source} but the checkpoint holds different "
                                         f"values for them", mismatched=[(alias, np.shape(arr), np.shape(staged[source]))])
            staged.setdefault(source, arr)
            report.ignored.append(alias)
    out: dict[str, np.ndarray] = {}
    heads = set(head_names(config, model_class))
    for name, shape in expected.items():
        if name not in staged:
            report.missing.append(name)
            continue
        arr = staged[name]
        if tuple(np.shape(arr)) != tuple(shape):
            report.mismatched.append((name, tuple(np.shape(arr)), tuple(shape)))
            continue
        out[name] = arr
    report.unexpected = [n for n in staged if n not in expected]
    # Decide what is fatal.
    new_head = [n for n in report.missing if n in heads or n.startswith(spec.prefix + "pooler.")]
    fatal_missing = [n for n in report.missing if n not in new_head or not allow_new_head]
    # An unused encoder tensor means the config and checkpoint disagree (e.g. more layers): fatal when strict.
    # An unused pooler or head tensor is normal (pre-training checkpoint into BertModel): reported only.
    fatal_unexpected = [n for n in report.unexpected
                        if strict and n[len(spec.prefix):].startswith(("embeddings.", "encoder."))]
    if fatal_missing or report.mismatched or fatal_unexpected:
        hint = ""
        if fatal_missing and all(n in new_head for n in fatal_missing):
            hint = " (pass allow_new_head=True to initialise a new head)"
        raise WeightMappingError(f"checkpoint does not fit {model_class}{hint}", fatal_missing,
                                 fatal_unexpected, report.mismatched)
    if new_head:
        fresh = init_weights(config, model_class, seed=seed, add_pooling_layer=add_pooling_layer)
        for n in new_head:
            out[n] = fresh[n]
        report.initialized = list(new_head)
        report.missing = []
    return {n: out[n] for n in expected}, report


def fillable_classes(state_names: Iterable[str], config: BertConfig) -> list[str]:
    """Model classes this checkpoint fills completely without initialising anything."""
    names = {n[5:] if n.startswith("bert.") else n for n in state_names}
    out = []
    for cls in MODEL_CLASSES:
        spec = HEADS[cls]
        need = {n[len(spec.prefix):] if n.startswith(spec.prefix) and spec.prefix else n
                for n in canonical_shapes(config, cls)}
        if need <= names:
            out.append(cls)
    return out
