"""Weight file formats as a registry: how each is recognised in a directory, read and written.

Every reader returns canonical ``{name: np.ndarray}`` (Hugging Face PyTorch names and layouts) without
executing code from the file, after validating the file (``formats.base``); every writer takes the same
state dict, the same ``shard_size`` (shardable formats) and the same ``progress(nbytes)`` callback.
``read_weights`` picks the first format whose files are present, in ``FORMATS`` order.

=============  ===========================================  ==================  =========================
name           files                                        needs               naming
=============  ===========================================  ==================  =========================
safetensors    model.safetensors (+ sharded index)          numpy               canonical
pytorch        pytorch_model.bin (+ sharded index)          torch               canonical
tf-h5          tf_model.h5 (+ sharded index)                h5py                scheme ``hf_tf_h5``
flax-msgpack   flax_model.msgpack (+ sharded index)         msgpack             scheme ``flax``
google-ckpt    bert_model.ckpt.index / .data-* (TF1 bundle) tensorflow          scheme ``google_ckpt``
=============  ===========================================  ==================  =========================

Layers (imports go down only): this registry -> one module per format (``safetensors``, ``pytorch``,
``tf_h5``, ``flax_msgpack``, ``google_ckpt``; each imports its library only when called) ->
``shards`` (the one planner and index reader/writer) -> ``base`` (error type, caps, checks, scheme
matching, config finder) -> ``bert_common.io_utils`` (the one atomic writer).

The last three formats name tensors by module path, and that path depends on the head class. Which
class a file holds is decided by trying every class in ``bert_common.weights.HEADS`` (with and without
the pooler) and taking the one whose names match the file exactly (``match_scheme``), or by the caller's
``model_class``.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import flax_msgpack, google_ckpt, pytorch, safetensors, tf_h5
from bert_common.formats.base import (CheckpointError, Format, find_config, match_scheme, plan_scheme,
                                      require_config)
from bert_common.formats.shards import parse_size

FORMATS: dict[str, Format] = {m.FORMAT.name: m.FORMAT for m in (safetensors, pytorch, tf_h5, flax_msgpack,
                                                                 google_ckpt)}


def register_format(fmt: Format) -> None:
    FORMATS[fmt.name] = fmt


def writable() -> list[str]:
    return [n for n, f in FORMATS.items() if f.write is not None]


def shardable() -> list[str]:
    return [n for n, f in FORMATS.items() if f.write is not None and f.shardable]


def _matches(f: Format, base: str, in_dir: bool = False) -> bool:
    # Inside a directory only the canonical names count: ``training_args.bin`` is not a weight file.
    patterns = f.dir_patterns if in_dir else f.patterns
    return base in f.files or any(fnmatch.fnmatch(base, p) for p in patterns)


def detect_formats(path: str) -> list[str]:
    """Names of every format with files present in directory ``path`` (or the one a file belongs to).

    A path that is not a file but has ``path + ".index"`` beside it is a TF checkpoint prefix.
    """
    if os.path.isdir(path):
        present = os.listdir(path)
        return [f.name for f in FORMATS.values() if any(_matches(f, b, in_dir=True) for b in present)]
    base = os.path.basename(path)
    if not os.path.exists(path) and os.path.exists(path + ".index"):
        return ["google-ckpt"]
    for f in FORMATS.values():  # sharded indexes first: their names end in .json, not the format's suffix
        if any(x.endswith(".index.json") and base.endswith(x) for x in f.files):
            return [f.name]
    for f in FORMATS.values():
        if _matches(f, base):
            return [f.name]
    return []


def read_weights(path: str, config: BertConfig | None = None, fmt: str | None = None, **opts
                 ) -> tuple[dict[str, np.ndarray], str]:
    """(canonical state dict, format name). Raises FileNotFoundError naming ``path`` when no weights,
    ``CheckpointError`` naming the file and tensor for a file that fails validation.

    ``opts``: ``model_class`` (formats whose names depend on the head; inferred when absent).
    """
    if fmt and fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {sorted(FORMATS)}")
    found = [fmt] if fmt else detect_formats(path)
    if not found:
        wanted = sorted({n for f in FORMATS.values() for n in f.files})
        raise FileNotFoundError(f"no weights found in {path} (looked for {', '.join(wanted)})")
    return FORMATS[found[0]].read(path, config, **opts), found[0]


def write_weights(directory: str, config: BertConfig | None, state: Mapping[str, np.ndarray],
                  fmt: str = "safetensors", shard_size: str | int | None = None, progress=None, **opts) -> list[str]:
    """Write ``state`` in format ``fmt`` into existing ``directory``; returns the file names.

    ``shard_size`` (shardable formats only) splits the weights HF's way; ``progress(nbytes)`` is called
    after each file (or chunk) is written."""
    if fmt not in writable():
        raise ValueError(f"--to {fmt!r} is not one of {writable()}")
    if shard_size is not None:
        if fmt not in shardable():
            raise ValueError(f"--shard-size {shard_size!r} applies to {shardable()} only, not --to {fmt}")
        parse_size(shard_size)
    return FORMATS[fmt].write(directory, config, state, shard_size=shard_size, progress=progress, **opts)


__all__ = ["Format", "FORMATS", "CheckpointError", "register_format", "detect_formats", "read_weights",
           "write_weights", "match_scheme", "plan_scheme", "require_config", "find_config", "writable",
           "shardable", "parse_size"]
