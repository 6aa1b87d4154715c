"""Hugging Face TF 2 ``tf_model.h5``, read and written as plain data with h5py (never through Keras).

Layout (recorded from ``TFBert*.save_pretrained`` in transformers 4.57.1 with tf-keras 2.21, the
legacy Keras h5 weight format):

- root attribute ``layer_names``: the model's top-level layers, e.g. ``[b"bert", b"mlm___cls"]``;
  attributes ``backend = "tensorflow"`` and ``keras_version``;
- one group per layer, whose attribute ``weight_names`` lists ``"{model scope}/{variable path}:0"``
  (``tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight:0``); each weight is the dataset at
  that (nested) path inside the layer's group;
- the MLM head layer (``mlm___cls``) also lists and stores the encoder's five embedding weights,
  because the head holds the embedding layer for its tied decoder (``SHARED_WEIGHTS``).

The model scope is ignored on reading (as HF does) and written as Keras names the class
(``MODEL_SCOPES``). Attribute arrays over 64 KiB are split by Keras into ``name0``, ``name1``...; both
forms are read and written. h5 has no bfloat16, so bf16 tensors are stored as their uint16 bit pattern
with the dataset attribute ``bertrio_dtype = "bfloat16"`` (HF's TF classes do not read bf16 weights).
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import atomic_path, match_scheme, plan_scheme, require, require_config, transposed
from bert_common.safetensors_io import CheckpointError

WEIGHTS_NAME = "tf_model.h5"
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
_ATTR_LIMIT = 64512  # HDF5 object header limit Keras works around by chunking attributes
_BF16_ATTR = "bertrio_dtype"


def _h5py():
    return require("h5py", "tf", "tf-h5")


def _read_attr_list(group, name: str) -> list[str]:
    if name in group.attrs:
        raw = list(group.attrs[name])
    else:  # chunked: name0, name1, ...
        raw, i = [], 0
        while f"{name}{i}" in group.attrs:
            raw.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]


def _write_attr_list(group, name: str, values: list[str]) -> None:
    data = np.array([v.encode("utf-8") for v in values]) if values else np.array([], dtype="S1")
    if data.nbytes <= _ATTR_LIMIT:
        group.attrs[name] = data
        return
    chunks = int(np.ceil(data.nbytes / _ATTR_LIMIT))
    for i, part in enumerate(np.array_split(data, chunks)):
        group.attrs[f"{name}{i}"] = part


def _file(path: str) -> str:
    if os.path.isdir(path):
        return os.path.join(path, WEIGHTS_NAME)
    return path


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """``{variable path without model scope, e.g. "bert/pooler/dense/kernel:0": array}`` (float32 or bf16)."""
    h5py = _h5py()
    file = _file(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} at {path}")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(file, "r") as f:
            layers = _read_attr_list(f, "layer_names")
            if not layers:
                raise CheckpointError(f"{file}: no 'layer_names' attribute; not a Keras/HF TF h5 weight file")
            for layer in layers:
                if layer not in f:
                    raise CheckpointError(f"{file}: layer {layer!r} is listed but has no group")
                group = f[layer]
                for weight in _read_attr_list(group, "weight_names"):
                    if weight not in group:
                        raise CheckpointError(f"{file}: weight {weight!r} of layer {layer!r} is listed but absent")
                    ds = group[weight]
                    arr = ds[()]
                    # (attribute lookups are slow in h5py: only uint16 data can be bf16 bits)
                    if arr.dtype == np.uint16 and ds.attrs.get(_BF16_ATTR) == "bfloat16":
                        import ml_dtypes
                        arr = arr.view(ml_dtypes.bfloat16)
                    name = weight.split("/", 1)[1] if "/" in weight else weight  # drop the model scope
                    if name in out:  # a shared weight listed by two layers must be one tensor
                        if out[name].shape != arr.shape or not np.array_equal(out[name], arr):
                            raise CheckpointError(f"{file}: {name} is stored twice with different values")
                        continue
                    out[name] = arr
    except OSError as e:  # h5py reports truncation and corruption as OSError
        raise CheckpointError(f"{file}: unreadable h5 file ({e})") from None
    except KeyError as e:
        raise CheckpointError(f"{file}: inconsistent h5 file ({e})") from None
    return out


def read(path: str, config: BertConfig | None, model_class: str | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from ``tf_model.h5`` (a directory or the file)."""
    config = require_config(path, config)
    return match_scheme(read_tensors(path), SCHEME, config, model_class, source=_file(path))


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], model_class: str | None = None,
          progress=None, **_: object) -> list[str]:
    """Write ``tf_model.h5`` into ``directory``; returns ``["tf_model.h5"]``. One tensor in memory at a time.

    ``progress(nbytes)`` is called after each tensor is written."""
    h5py = _h5py()
    cls, plan = plan_scheme(state, SCHEME, config, model_class)
    scope = MODEL_SCOPES[cls]
    layers: dict[str, list[tuple[str, str, bool]]] = {}
    for name, path, transpose in plan:
        layers.setdefault(path.split("/", 1)[0], []).append((name, path, transpose))
    for layer, prefix in SHARED_WEIGHTS.items():
        if layer in layers:
            layers[layer] += [e for e in layers["bert"] if e[1].startswith(prefix)]
    with atomic_path(os.path.join(directory, WEIGHTS_NAME)) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_attr_list(f, "layer_names", list(layers))
            f.attrs["backend"] = "tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION
            for layer, entries in layers.items():
                group = f.create_group(layer)
                _write_attr_list(group, "weight_names", [f"{scope}/{p}" for _, p, _ in entries])
                for name, path, transpose in entries:
                    arr = transposed(state[name], transpose)
                    bf16 = arr.dtype.name == "bfloat16"
                    ds = group.create_dataset(f"{scope}/{path}", data=arr.view(np.uint16) if bf16 else arr)
                    if bf16:
                        ds.attrs[_BF16_ATTR] = "bfloat16"
                    if progress is not None:
                        progress(arr.nbytes)
    return [WEIGHTS_NAME]
