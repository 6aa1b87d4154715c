"""Hugging Face TF 2 ``tf_model.h5`` (single or sharded), read and written as plain data with h5py
(never through Keras).

Single-file layout (recorded from ``TFBert*.save_pretrained`` in transformers 4.57.1 with tf-keras 2.21,
the legacy Keras h5 weight format):

- root attribute ``layer_names``: the model's top-level layers, e.g. ``[b"bert", b"mlm___cls"]``;
  attributes ``backend = "tensorflow"`` and ``keras_version``;
- one group per layer, whose attribute ``weight_names`` lists ``"{model scope}/{variable path}:0"``
  (``tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight:0``); each weight is the dataset at
  that (nested) path inside the layer's group;
- the MLM head layer (``mlm___cls``) also lists and stores the encoder's five embedding weights,
  because the head holds the embedding layer for its tied decoder (``SHARED_WEIGHTS``).

Sharded layout (``TFPreTrainedModel.save_pretrained(max_shard_size=...)``, ``tf_shard_checkpoint``):
shards ``tf_model-0000i-of-0000n.h5`` and ``tf_model.h5.index.json`` whose ``weight_map`` keys are the
full variable names *with* the model scope (``tf_bert_model/bert/pooler/dense/kernel:0``); each shard
holds, at its root, one dataset per variable at the name *without* the scope
(``bert/pooler/dense/kernel:0``) and a root attribute ``layer_names`` listing those dataset names,
sorted. Each variable is stored once (the tied embedding too).

The model scope is ignored on reading (as HF does) and written as Keras names the class
(``MODEL_SCOPES``). Attribute arrays over 64 KiB are split by Keras into ``name0``, ``name1``...; both
forms are read and written. h5 has no bfloat16, so bf16 tensors are stored as their uint16 bit pattern
with the dataset attribute ``bertrio_dtype = "bfloat16"`` (HF's TF classes do not read bf16 weights).

Reading validates before it trusts: every listed name must be a dataset (not a group), of a dtype in
``ALLOWED_DTYPES``, with the shape the config allows for that variable, and with all its storage
present (an unallocated dataset would read as fill values) — all checked before any data is read.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import shards
from bert_common.formats.base import (MAX_TREE_DEPTH, CheckpointError, Format, bfloat16, check_dtype,
                                      check_shape, count_cap, expected_shapes, match_scheme, nbytes, plan_scheme,
                                      require, report, require_config, transposed)
from bert_common.io_utils import atomic_path
from bert_common.weights import NamingScheme, register_scheme

WEIGHTS_NAME = "tf_model.h5"
INDEX_NAME = "tf_model.h5.index.json"
SCHEME = "hf_tf_h5"
KERAS_VERSION = "2.21.0"  # the tf-keras version whose files this layout was recorded from
# Keras snake-cases the class name into the top-level scope of every variable.
MODEL_SCOPES = {
    "BertModel": "tf_bert_model",
    "BertForPreTraining": "tf_bert_for_pre_training",
    "BertLMHeadModel": "tf_bert_lm_head_model",
    "BertForMaskedLM": "tf_bert_for_masked_lm",
    "BertForNextSentencePrediction": "tf_bert_for_next_sentence_prediction",
    "BertForSequenceClassification": "tf_bert_for_sequence_classification",
    "BertForMultipleChoice": "tf_bert_for_multiple_choice",
    "BertForTokenClassification": "tf_bert_for_token_classification",
    "BertForQuestionAnswering": "tf_bert_for_question_answering",
}
# layer -> path prefix of weights of *another* layer that it also lists (and stores a copy of).
SHARED_WEIGHTS = {"mlm___cls": "bert/embeddings/"}
# h5 dataset dtype -> NumPy name (uint16 only with the bf16 attribute, mapped in _dtype_of).
ALLOWED_DTYPES = {"float16": "float16", "float32": "float32", "float64": "float64", "bfloat16": "bfloat16"}
_ATTR_LIMIT = 64512  # HDF5 object header limit Keras works around by chunking attributes
_BF16_ATTR = "bertrio_dtype"

# HF TF 2 (``TFBert*``) variable names, as stored in ``tf_model.h5`` after the model scope
# (``tf_bert_model/``), recorded from transformers 4.57.1 + tf-keras 2.21 (see docs/convert.md).
# The encoder lives under ``bert/`` in every class; Keras list layers are ``layer_._{i}``; the MLM head
# is the layer ``mlm___cls`` and the NSP head ``nsp___cls``; word embeddings are a bare ``weight``.
register_scheme(NamingScheme(
    SCHEME, "/",
    {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": ("embeddings", False),
     "norm.weight": ("gamma", False), "norm.bias": ("beta", False), "vector": ("bias", False)},
    module_renames=((r"^(embeddings|encoder|pooler)\b", r"bert.\1"),
                    (r"^cls\.predictions", "mlm___cls.predictions"),
                    (r"^cls\.seq_relationship", "nsp___cls.seq_relationship")),
    path_renames=((r"/layer/(\d+)/", r"/layer_._\1/"),),
    overrides={n: ("bert/embeddings/word_embeddings/weight", False)
               for n in ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")},
    suffix=":0",
))


def _h5py():
    return require("h5py", "tf", "tf-h5")


def _read_attr_list(group, name: str, file: str = "") -> list[str]:
    if name in group.attrs:
        raw = list(np.atleast_1d(group.attrs[name]))
    else:  # chunked: name0, name1, ...
        raw, i = [], 0
        while f"{name}{i}" in group.attrs:
            raw.extend(np.atleast_1d(group.attrs[f"{name}{i}"]))
            i += 1
            count_cap(file, len(raw))
    count_cap(file, len(raw))
    out = []
    for x in raw:
        if not isinstance(x, (bytes, str, np.bytes_, np.str_)):
            raise CheckpointError(f"{file}: attribute {name!r} holds a {type(x).__name__}, not a name")
        out.append(x.decode("utf-8") if isinstance(x, bytes) else str(x))
    return out


def _write_attr_list(group, name: str, values: list[str]) -> None:
    data = np.array([v.encode("utf-8") for v in values]) if values else np.array([], dtype="S1")
    if data.nbytes <= _ATTR_LIMIT:
        group.attrs[name] = data
        return
    chunks = int(np.ceil(data.nbytes / _ATTR_LIMIT))
    for i, part in enumerate(np.array_split(data, chunks)):
        group.attrs[f"{name}{i}"] = part


def _dataset(h5py, group, key: str, file: str, name: str, expected):
    """The validated dataset at ``group[key]`` for variable ``name`` and its NumPy dtype name."""
    if key.count("/") > MAX_TREE_DEPTH:
        raise CheckpointError(f"{file}: {key!r} is nested over {MAX_TREE_DEPTH} deep (MAX_TREE_DEPTH)")
    ds = group.get(key)
    if ds is None:
        raise CheckpointError(f"{file}: weight {key!r} is listed but absent")
    if not isinstance(ds, h5py.Dataset):
        raise CheckpointError(f"{file}: weight {key!r} is a {type(ds).__name__}, not a dataset")
    dt = ds.dtype
    kind = dt.name
    if dt == np.uint16 and ds.attrs.get(_BF16_ATTR) in ("bfloat16", b"bfloat16"):
        kind = "bfloat16"
    if dt.fields is not None or dt.subdtype is not None:
        kind = str(dt)
    np_name = check_dtype(file, name, kind, ALLOWED_DTYPES, "tf-h5")
    shape = tuple(int(d) for d in ds.shape)
    check_shape(file, name, shape, expected, strict_names=True)
    want = nbytes(file, name, list(shape), dt.itemsize)
    if ds.chunks is None:
        stored = ds.id.get_storage_size()
        if want and stored != want and not ds.compression:
            raise CheckpointError(f"{file}: weight {key!r} declares {want} bytes but stores {stored}")
    elif want:
        need = 1
        for d, c in zip(shape, ds.chunks):
            need *= -(-d // c)
        if ds.id.get_num_chunks() != need:
            raise CheckpointError(f"{file}: weight {key!r} has {ds.id.get_num_chunks()} of its {need} chunks "
                                  f"(truncated or partly written)")
    return ds, np_name


def _read(ds, np_name: str) -> np.ndarray:
    arr = ds[()]
    if np_name == "bfloat16":
        arr = arr.view(bfloat16())
    return np.ascontiguousarray(arr)


def _guard(file: str, fn):
    """Run ``fn()`` turning h5py's errors on corrupt input into CheckpointError naming ``file``."""
    h5py = _h5py()
    try:
        with h5py.File(file, "r") as f:
            return fn(h5py, f)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, UnicodeDecodeError,
            AttributeError, MemoryError, OverflowError) as e:  # h5py reports corruption in many ways
        raise CheckpointError(f"{file}: unreadable or inconsistent h5 file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_file(file: str, expected=None) -> dict[str, np.ndarray]:
    """``{variable path without model scope, e.g. "bert/pooler/dense/kernel:0": array}`` from one
    Keras-layout ``tf_model.h5``; every dataset validated (``expected``: scheme shapes) before any read."""
    def body(h5py, f):
        layers = _read_attr_list(f, "layer_names", file)
        if not layers:
            raise CheckpointError(f"{file}: no 'layer_names' attribute; not a Keras/HF TF h5 weight file")
        plan: dict[str, tuple] = {}
        for layer in layers:
            group = f.get(layer)
            if not isinstance(group, h5py.Group):
                raise CheckpointError(f"{file}: layer {layer!r} is listed but has no group")
            for weight in _read_attr_list(group, "weight_names", file):
                name = weight.split("/", 1)[1] if "/" in weight else weight  # drop the model scope
                ds, np_name = _dataset(h5py, group, weight, file, name, expected)
                plan.setdefault(name, []).append((ds, np_name))
                count_cap(file, len(plan))
        out: dict[str, np.ndarray] = {}
        for name, copies in plan.items():  # all validated: now read
            out[name] = _read(*copies[0])
            for other in copies[1:]:  # a shared weight listed by two layers must be one tensor
                if other[0].shape != out[name].shape or not np.array_equal(_read(*other), out[name]):
                    raise CheckpointError(f"{file}: {name} is stored twice with different values")
        return out
    return _guard(file, body)


def load_shard(file: str, expected=None) -> dict[str, np.ndarray]:
    """``{dataset name (variable path without scope): array}`` from one HF TF shard."""
    def body(h5py, f):
        names = _read_attr_list(f, "layer_names", file)
        plan = [(n, *_dataset(h5py, f, n, file, n, expected)) for n in names]
        if len(set(names)) != len(names):
            raise CheckpointError(f"{file}: 'layer_names' lists a dataset twice")
        return {n: _read(ds, np_name) for n, ds, np_name in plan}
    return _guard(file, body)


def _strip_scope(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else key


def read_tensors(path: str, config: BertConfig | None = None) -> dict[str, np.ndarray]:
    """``{variable path without scope: array}`` from a directory, a ``.h5`` file or a shard index."""
    expected = expected_shapes(config, SCHEME) if config is not None else None
    if os.path.isdir(path):
        single = os.path.join(path, WEIGHTS_NAME)
        path = single if os.path.isfile(single) else os.path.join(path, INDEX_NAME)
    if path.endswith(".index.json"):
        merged = shards.ShardedRead(path, key=_strip_scope)
        for file in merged.files:
            merged.add(file, load_shard(file, expected))
        return merged.result()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} at {path}")
    return load_file(path, expected)


def read(path: str, config: BertConfig | None, model_class: str | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from ``tf_model.h5`` or its shards (a directory, the file or the index)."""
    config = require_config(path, config)
    return match_scheme(read_tensors(path, config), SCHEME, config, model_class, source=path)


def _dataset_out(group, key: str, arr: np.ndarray) -> None:
    bf16 = arr.dtype.name == "bfloat16"
    ds = group.create_dataset(key, data=arr.view(np.uint16) if bf16 else arr)
    if bf16:
        ds.attrs[_BF16_ATTR] = "bfloat16"


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], model_class: str | None = None,
          shard_size=None, progress=None, **_: object) -> list[str]:
    """Write ``tf_model.h5`` (Keras layout) or, when ``shard_size`` splits it, HF's TF shards + index.
    One tensor in memory at a time; ``progress(nbytes)`` after each file. Returns the file names."""
    h5py = _h5py()
    cls, plan = plan_scheme(state, SCHEME, config, model_class)
    scope = MODEL_SCOPES[cls]
    entries = {path: (name, t) for name, path, t in plan}

    def save_keras(file: str) -> None:
        layers: dict[str, list[str]] = {}
        for path in entries:
            layers.setdefault(path.split("/", 1)[0], []).append(path)
        for layer, prefix in SHARED_WEIGHTS.items():
            if layer in layers:
                layers[layer] += [p for p in layers["bert"] if p.startswith(prefix)]
        with atomic_path(file) as tmp, h5py.File(tmp, "w") as f:
            _write_attr_list(f, "layer_names", list(layers))
            f.attrs["backend"] = "tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION
            for layer, paths in layers.items():
                group = f.create_group(layer)
                _write_attr_list(group, "weight_names", [f"{scope}/{p}" for p in paths])
                for p in paths:
                    _dataset_out(group, f"{scope}/{p}", transposed(state[entries[p][0]], entries[p][1]))

    shard_plan = shards.ShardedWrite(directory, WEIGHTS_NAME, [(p, np.asarray(state[n]).nbytes) for n, p, _ in plan],
                                     shard_size, index_key=lambda p: f"{scope}/{p}")
    for file, keys in shard_plan:
        if not shard_plan.sharded:
            save_keras(file)
        else:  # HF's shard layout: datasets at the root, named without the scope, listed sorted
            with atomic_path(file) as tmp, h5py.File(tmp, "w") as f:
                for p in sorted(keys):
                    _dataset_out(f, p, transposed(state[entries[p][0]], entries[p][1]))
                _write_attr_list(f, "layer_names", sorted(keys))
        report(progress, shard_plan.nbytes(keys))
    return shard_plan.finish()


FORMAT = Format("tf-h5", (WEIGHTS_NAME, INDEX_NAME), read, write,
                "Hugging Face TF 2 weights (h5py, never Keras deserialisation)", patterns=("*.h5",), shardable=True)

__all__ = ["read", "write", "read_tensors", "load_file", "load_shard", "FORMAT", "WEIGHTS_NAME", "INDEX_NAME",
           "MODEL_SCOPES", "ALLOWED_DTYPES"]
