"""Google's original TF1 BERT checkpoint: ``bert_model.ckpt.index`` + ``bert_model.ckpt.data-*`` and
``bert_config.json``, read with ``tf.train.load_checkpoint`` and written with TF's own bundle ops.

The bundle (``.index`` is an SSTable of BundleEntryProto, ``.data-*`` raw tensor bytes with CRC32C
checksums) is read and written by TensorFlow, so files we write are exactly what
``tf.train.load_checkpoint`` and Google's ``modeling.py`` expect. Names follow the ``google_ckpt``
scheme (``bert/encoder/layer_0/attention/self/query/kernel`` [in, out]; ``cls/predictions/output_bias``;
``cls/seq_relationship/output_weights`` [2, H]; classifier ``output_weights`` / ``output_bias``;
SQuAD ``cls/squad/output_*``). Training state in the checkpoint is skipped (``SKIPPED``).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats.base import (CheckpointError, Format, check_dtype, check_shape, count_cap, expected_shapes,
                                      match_scheme, plan_scheme, report, require, require_config, transposed)
from bert_common.io_utils import atomic_write_text, cleanup_leftovers, temp_name
from bert_common.weights import NamingScheme, register_scheme

PREFIX = "bert_model.ckpt"
CONFIG_NAME = "bert_config.json"
SCHEME = "google_ckpt"
# Optimizer slots, step counters and loss-scale state a training run saves beside the weights.
SKIPPED = ("*/adam_m", "*/adam_v", "*/Adam", "*/Adam_1", "*/Momentum", "*/ExponentialMovingAverage",
           "global_step", "good_steps", "loss_scale", "current_loss_scale", "_CHECKPOINTABLE_OBJECT_GRAPH",
           "beta1_power", "beta2_power")
# Keys of Google's bert_config.json (everything else stays in config.json).
GOOGLE_CONFIG_KEYS = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
                      "initializer_range", "intermediate_size", "max_position_embeddings", "num_attention_heads",
                      "num_hidden_layers", "type_vocab_size", "vocab_size")
WRITE_CHUNK_BYTES = 64 * 2**20  # tensors handed to one SaveV2 call; bounds the writer's extra memory
# TF dtype name -> NumPy name a weight may have.
ALLOWED_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64"}

# Google's original TF1 BERT (google-research/bert ``modeling.py``, ``run_pretraining.py``,
# ``run_classifier.py``, ``run_squad.py``): the encoder is always under ``bert/``; embedding tables are
# the bare scope name; output layers built with ``tf.get_variable`` keep [out, in] ``output_weights``.
register_scheme(NamingScheme(
    SCHEME, "/",
    {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": (None, False),
     "norm.weight": ("gamma", False), "norm.bias": ("beta", False), "vector": ("output_bias", False)},
    module_renames=((r"^(embeddings|encoder|pooler)\b", r"bert.\1"), (r"\blayer\.(\d+)", r"layer_\1")),
    overrides={
        "cls.seq_relationship.weight": ("cls/seq_relationship/output_weights", False),
        "cls.seq_relationship.bias": ("cls/seq_relationship/output_bias", False),
        "classifier.weight": ("output_weights", False),   # run_classifier.py
        "classifier.bias": ("output_bias", False),
        "qa_outputs.weight": ("cls/squad/output_weights", False),  # run_squad.py
        "qa_outputs.bias": ("cls/squad/output_bias", False),
    },
))


def _tf():
    tf = require("tensorflow", "tf", "google-ckpt")
    return tf


def find_prefix(path: str) -> str:
    """The checkpoint prefix for a directory, an ``.index`` file or a prefix."""
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):  # TF's "checkpoint" state file names the latest prefix
            tf = _tf()
            latest = tf.train.latest_checkpoint(path)
            # the state file may name any path: only a checkpoint inside this directory is followed
            if latest and _same_dir(os.path.dirname(os.path.abspath(latest)), path):
                return os.path.join(path, os.path.basename(latest))
        indexes = sorted(f for f in os.listdir(path) if fnmatch.fnmatch(f, "*.ckpt*.index"))
        if not indexes:
            raise FileNotFoundError(f"no *.ckpt*.index in {path}")
        if len(indexes) > 1:
            raise ValueError(f"{path} holds several checkpoints ({', '.join(indexes)}); pass the prefix, e.g. "
                             f"{os.path.join(path, indexes[-1][:-6])}")
        return os.path.join(path, indexes[0][: -len(".index")])
    if path.endswith(".index"):
        return path[: -len(".index")]
    return path


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def skipped(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in SKIPPED)


def read_tensors(path: str, config: BertConfig | None = None) -> dict[str, np.ndarray]:
    """``{variable name: array}`` for every non-training-state variable in the checkpoint; dtypes and
    (with ``config``) shapes of every variable are checked from the index before any tensor is read."""
    tf = _tf()
    prefix = find_prefix(path)
    if not os.path.isfile(prefix + ".index"):
        raise FileNotFoundError(f"no checkpoint index {prefix}.index")
    expected = expected_shapes(config, SCHEME) if config is not None else None
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
        count_cap(prefix, len(shapes))
        names = sorted(n for n in shapes if not skipped(n))
        for n in names:
            check_dtype(prefix, n, dtypes[n].name, ALLOWED_DTYPES, "google-ckpt")
            check_shape(prefix, n, tuple(shapes[n]), expected, strict_names=True)
        # get_tensor verifies each tensor's CRC32C and size, so truncation or corruption raises here,
        # before the caller writes anything.
        out = {}
        for n in names:
            arr = np.asarray(reader.get_tensor(n))
            if arr.dtype.name != ALLOWED_DTYPES[dtypes[n].name] or arr.shape != tuple(shapes[n]):
                raise CheckpointError(f"{prefix}: tensor {n!r} reads as {arr.dtype} {arr.shape}, its index says "
                                      f"{dtypes[n].name} {tuple(shapes[n])}")
            out[n] = arr
        return out
    except CheckpointError:
        raise
    except (tf.errors.OpError, ValueError, RuntimeError, IndexError, OSError, KeyError, TypeError, MemoryError) as e:
        raise CheckpointError(f"{prefix}: unreadable TF checkpoint ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def read(path: str, config: BertConfig | None, model_class: str | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from a Google checkpoint (directory, ``.index`` file or prefix)."""
    prefix = find_prefix(path)
    config = require_config(prefix, config)
    return match_scheme(read_tensors(prefix, config), SCHEME, config, model_class, source=prefix)


def google_config(config: BertConfig) -> dict:
    d = config.to_dict()
    return {k: d[k] for k in GOOGLE_CONFIG_KEYS if k in d}


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], model_class: str | None = None,
          shard_size=None, progress=None, **_: object) -> list[str]:
    """Write ``bert_model.ckpt.{index,data-*}`` + ``bert_config.json``; returns the file names.

    Tensors go to TF in chunks of ``WRITE_CHUNK_BYTES`` (one temporary bundle each), which TF's
    ``MergeV2Checkpoints`` then joins into one checkpoint, so memory stays near one chunk.
    ``progress(nbytes)`` is called after each chunk is saved.
    """
    if shard_size is not None:
        raise ValueError(f"--shard-size {shard_size!r}: google-ckpt is written as one bundle, not sharded")
    tf = _tf()
    _, plan = plan_scheme(state, SCHEME, config, model_class)
    chunks: list[list[tuple[str, str, bool]]] = [[]]
    size = 0
    for entry in plan:
        n = np.asarray(state[entry[0]]).nbytes
        if chunks[-1] and size + n > WRITE_CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += n
    cleanup_leftovers(os.path.join(directory, PREFIX))
    work = temp_name(os.path.join(directory, PREFIX))  # a name later runs recognise (io_utils)
    os.mkdir(work)
    try:
        prefixes = []
        for i, chunk in enumerate(chunks):
            prefix = os.path.join(work, f"part{i}")
            tensors = [tf.constant(transposed(state[name], t)) for name, _, t in chunk]
            tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[p for _, p, _ in chunk],
                              shape_and_slices=[""] * len(chunk), tensors=tensors)
            del tensors
            prefixes.append(prefix)
            report(progress, sum(np.asarray(state[name]).nbytes for name, _, _ in chunk))
        merged = os.path.join(work, PREFIX)
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=prefixes, destination_prefix=merged,
                                      delete_old_dirs=False)
        files = sorted(f for f in os.listdir(work) if f.startswith(PREFIX + "."))
        for f in files:  # data shards first, index last: the index is what makes the checkpoint visible
            if not f.endswith(".index"):
                os.replace(os.path.join(work, f), os.path.join(directory, f))
        os.replace(os.path.join(work, PREFIX + ".index"), os.path.join(directory, PREFIX + ".index"))
    except tf.errors.OpError as e:
        raise CheckpointError(f"writing {directory}/{PREFIX} failed: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(google_config(config), indent=2) + "\n")
    return files + [CONFIG_NAME]


FORMAT = Format("google-ckpt", (PREFIX + ".index",), read, write, "Google's original TF1 checkpoint + bert_config.json",
                patterns=("*.index",), dir_patterns=("*.ckpt*.index",))

__all__ = ["read", "write", "read_tensors", "find_prefix", "FORMAT", "PREFIX", "CONFIG_NAME", "ALLOWED_DTYPES"]
