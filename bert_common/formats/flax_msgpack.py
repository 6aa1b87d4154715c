"""Hugging Face Flax ``flax_model.msgpack`` (single or sharded): the ``flax.serialization`` encoding,
decoded with msgpack and NumPy alone (no jax/flax import, no model built).

Encoding (flax.serialization, checked against it in tests/test_formats.py): the parameter tree is a
msgpack map of maps with string keys; each array leaf is msgpack ext type 1 whose payload is itself
``packb((shape, dtype name, C-order bytes))``; ext 3 is a NumPy scalar in the same encoding; an array
over 2**30 bytes is split into ``{"__msgpack_chunked_array__": True, "shape": {"0": ..}, "chunks":
{"0": flat part, ...}}``. HF's tree is the Flax module tree, identical to the ``flax`` naming scheme
(head models under ``bert/``).

Sharded (``FlaxPreTrainedModel.save_pretrained(max_shard_size=...)``, ``flax_shard_checkpoint``):
``flax_model-0000i-of-0000n.msgpack``, each the nested tree of its own leaves, and
``flax_model.msgpack.index.json`` whose ``weight_map`` keys are the "/"-joined tree paths.

Reading validates before it trusts: map sizes, nesting depth (``MAX_TREE_DEPTH``) and leaf count are
capped; each array record's dtype must be in ``ALLOWED_DTYPES`` and its shape the one the config allows
for its path, and its byte count must equal shape x itemsize, before an array is made of it.
"""
from __future__ import annotations

import io
import os
from typing import Any, Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import shards
from bert_common.formats.base import (MAX_TENSORS, MAX_TREE_DEPTH, CheckpointError, Format, bfloat16,
                                      check_dtype, check_shape, count_cap, expected_shapes, match_scheme, nbytes,
                                      plan_scheme, report, require, require_config, transposed)
from bert_common.io_utils import atomic_file

WEIGHTS_NAME = "flax_model.msgpack"
INDEX_NAME = "flax_model.msgpack.index.json"
SCHEME = "flax"
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
MAX_CHUNK_SIZE = 2**30  # flax.serialization's limit per msgpack array payload
_CHUNKED = "__msgpack_chunked_array__"
# NumPy dtype names a weight record may carry.
ALLOWED_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _msgpack():
    return require("msgpack", "flax", "flax-msgpack")


_BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin8 / bin16 / bin32 markers


class _Record:
    """An undecoded array record: shape, dtype name and where its bytes lie in ``data``."""
    __slots__ = ("shape", "dtype", "data", "start", "n")

    def __init__(self, shape, dtype, data, start, n):
        self.shape, self.dtype, self.data, self.start, self.n = shape, dtype, data, start, n


def _parse_record(data: bytes) -> _Record:
    """Parse a flax record ``packb((shape, dtype name, bytes))`` without copying the array bytes (the
    record header is parsed with msgpack and the bin marker by hand)."""
    msgpack = _msgpack()
    try:
        up = msgpack.Unpacker(io.BytesIO(data), raw=True, max_buffer_size=len(data) or 1, max_array_len=64)
        if up.read_array_header() != 3:
            raise ValueError("not a (shape, dtype, bytes) triple")
        shape = up.unpack()
        dtype = up.unpack()
        pos = up.tell()
        width = _BIN_LENGTH_BYTES[data[pos]]
        n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
        start = pos + 1 + width
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException, msgpack.OutOfData) as e:
        raise CheckpointError(f"malformed array record ({type(e).__name__}: {e})") from None
    if not isinstance(dtype, bytes) or not isinstance(shape, list):
        raise CheckpointError(f"malformed array record (shape {shape!r}, dtype {dtype!r})")
    if start + n != len(data):
        raise CheckpointError(f"array record of shape {shape} holds {len(data) - start} bytes, declares {n}")
    return _Record(shape, dtype.decode("utf-8", "replace"), data, start, n)


def _ext_hook(code: int, data: bytes):
    if code in (EXT_NDARRAY, EXT_NPSCALAR):
        return _parse_record(data)
    raise CheckpointError(f"unsupported msgpack ext type {code} (only flax float arrays are weights)")


def _array(rec: _Record, file: str, path: str, expected) -> np.ndarray:
    np_name = check_dtype(file, path, rec.dtype, ALLOWED_DTYPES, "flax-msgpack")
    if np_name == "bfloat16":
        dt = bfloat16()
    else:
        dt = np.dtype(np_name)
    want = nbytes(file, path, rec.shape, dt.itemsize)
    check_shape(file, path, tuple(rec.shape), expected, strict_names=True)
    if rec.n != want:
        raise CheckpointError(f"{file}: tensor {path!r}: array record of shape {tuple(rec.shape)} {np_name} holds "
                              f"{rec.n} bytes, needs {want}")
    return np.frombuffer(rec.data, dtype=dt, count=want // dt.itemsize, offset=rec.start).reshape(rec.shape)


def _chunked(tree: dict, file: str, path: str, expected) -> np.ndarray:
    try:
        shape = [tree["shape"][str(i)] for i in range(len(tree["shape"]))]
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file}: malformed chunked array at {path!r} ({type(e).__name__}: {e})") from None
    if not chunks or not all(isinstance(c, _Record) for c in chunks):
        raise CheckpointError(f"{file}: chunked array at {path!r} has no array chunks")
    check_shape(file, path, tuple(shape) if all(isinstance(d, int) for d in shape) else (), expected,
                strict_names=True)
    parts = [_array(c, file, path, None).reshape(-1) for c in chunks]
    if len({p.dtype for p in parts}) != 1:
        raise CheckpointError(f"{file}: chunked array at {path!r} mixes dtypes")
    want = nbytes(file, path, shape, 1) // 1
    if sum(p.size for p in parts) != want:
        raise CheckpointError(f"{file}: chunked array at {path!r} holds {sum(p.size for p in parts)} values, "
                              f"its shape {tuple(shape)} needs {want}")
    return np.concatenate(parts).reshape(shape)


def _flatten(tree: Any, file: str, expected) -> dict[str, np.ndarray]:
    """``{"/"-joined path: array}``, iteratively (no recursion), capping depth and leaf count."""
    out: dict[str, np.ndarray] = {}
    stack = [("", tree, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise CheckpointError(f"{file}: parameter tree nested over {MAX_TREE_DEPTH} deep at {prefix[:200]!r} "
                                  f"(MAX_TREE_DEPTH)")
        if isinstance(node, dict) and _CHUNKED in node:
            out[prefix] = _chunked(node, file, prefix, expected)
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                if not isinstance(k, str):
                    raise CheckpointError(f"{file}: key {k!r} under {prefix!r} is not a string")
                stack.append((f"{prefix}/{k}" if prefix else k, v, depth + 1))
        elif isinstance(node, _Record):
            out[prefix] = _array(node, file, prefix, expected)
        else:
            raise CheckpointError(f"{file}: leaf {prefix!r} is a {type(node).__name__}, not an array")
        count_cap(file, len(out))
    return out


def load_file(file: str, expected=None) -> dict[str, np.ndarray]:
    """``{"/"-joined tree path: array}`` from one msgpack file, streamed from one open file."""
    msgpack = _msgpack()
    try:
        f = open(file, "rb")
    except IsADirectoryError:
        raise CheckpointError(f"{file}: is a directory, not a msgpack file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        unpacker = msgpack.Unpacker(f, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                                    max_buffer_size=max(1, min(size, 2**31 - 1)), max_map_len=MAX_TENSORS,
                                    max_array_len=MAX_TENSORS)
        try:
            tree = unpacker.unpack()
        except msgpack.OutOfData:
            raise CheckpointError(f"{file}: truncated msgpack file") from None
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}") from None
        except (ValueError, TypeError, RecursionError, MemoryError, msgpack.UnpackException) as e:
            raise CheckpointError(f"{file}: malformed msgpack file ({type(e).__name__}: {e})") from None
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            pass
        except Exception:  # noqa: BLE001 - anything after the tree is trailing data
            raise CheckpointError(f"{file}: trailing data after the parameter tree") from None
        else:
            raise CheckpointError(f"{file}: trailing data after the parameter tree")
    if not isinstance(tree, dict):
        raise CheckpointError(f"{file}: top level is a {type(tree).__name__}, not a parameter tree")
    return _flatten(tree, file, expected)


def read_tensors(path: str, config: BertConfig | None = None) -> dict[str, np.ndarray]:
    """``{"/"-joined tree path: array}`` from a directory, a ``.msgpack`` file or a shard index."""
    expected = expected_shapes(config, SCHEME) if config is not None else None
    if os.path.isdir(path):
        single = os.path.join(path, WEIGHTS_NAME)
        path = single if os.path.isfile(single) else os.path.join(path, INDEX_NAME)
    if not path.endswith(".index.json"):
        return load_file(path, expected)
    merged = shards.ShardedRead(path)
    for file in merged.files:
        merged.add(file, load_file(file, expected))
    return merged.result()


def read(path: str, config: BertConfig | None, model_class: str | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from ``flax_model.msgpack`` (directory, file or shard index)."""
    config = require_config(path, config)
    return match_scheme(read_tensors(path, config), SCHEME, config, model_class, source=path)


# ---------------------------------------------------------------------------------------------- writing
def _ext_header(n: int, code: int) -> bytes:
    """msgpack's smallest ext header for an ``n``-byte payload (what ``packb(ExtType)`` emits)."""
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes([fixed[n], code])
    if n < 2**8:
        return bytes([0xC7, n, code])
    if n < 2**16:
        return b"\xc8" + n.to_bytes(2, "big") + bytes([code])
    return b"\xc9" + n.to_bytes(4, "big") + bytes([code])


def _bin_header(n: int) -> bytes:
    """msgpack's smallest bin header for ``n`` bytes (``use_bin_type=True``)."""
    if n < 2**8:
        return bytes([0xC4, n])
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _write_array(f, arr: np.ndarray) -> None:
    """Write ``ExtType(1, packb((shape, dtype name, bytes)))`` without building the payload in memory:
    the bytes are identical to flax's ``_msgpack_ext_pack``, the array data goes straight to the file."""
    msgpack = _msgpack()
    arr = np.ascontiguousarray(arr)
    head = b"\x93" + msgpack.packb(list(arr.shape), use_bin_type=True) + \
        msgpack.packb(arr.dtype.name, use_bin_type=True) + _bin_header(arr.nbytes)
    f.write(_ext_header(len(head) + arr.nbytes, EXT_NDARRAY))
    f.write(head)
    f.write(arr.reshape(-1).view(np.uint8).data)


def _save_tree(file: str, leaves: Mapping[str, tuple[np.ndarray, bool]]) -> None:
    """Write the nested tree of ``{"/" path: (array, transpose)}`` as ``flax.serialization.to_bytes``
    would (sorted keys), one tensor in memory at a time."""
    msgpack = _msgpack()
    tree: dict = {}
    for path, leaf in leaves.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    packer = msgpack.Packer(use_bin_type=True)

    def emit(f, node) -> None:
        f.write(packer.pack_map_header(len(node)))
        # Sorted keys, as jax's pytree flattening leaves a Flax parameter dict: byte-identical to flax.
        for key, value in sorted(node.items()):
            f.write(packer.pack(key))
            if isinstance(value, dict):
                emit(f, value)
                continue
            arr = transposed(*value)
            if arr.nbytes > MAX_CHUNK_SIZE:  # flax's chunked form, for tables over 1 GiB
                step = max(1, MAX_CHUNK_SIZE // arr.dtype.itemsize)
                flat = arr.reshape(-1)
                chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
                f.write(packer.pack_map_header(3))
                f.write(packer.pack(_CHUNKED) + packer.pack(True) + packer.pack("shape"))
                f.write(packer.pack({str(i): d for i, d in enumerate(arr.shape)}))
                f.write(packer.pack("chunks") + packer.pack_map_header(len(chunks)))
                for i, c in enumerate(chunks):
                    f.write(packer.pack(str(i)))
                    _write_array(f, c)
            else:
                _write_array(f, arr)

    with atomic_file(file, "wb") as f:
        emit(f, tree)


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], model_class: str | None = None,
          shard_size=None, progress=None, **_: object) -> list[str]:
    """Write ``flax_model.msgpack`` (or HF's shards + ``flax_model.msgpack.index.json``) as
    ``flax.serialization.to_bytes`` would; ``progress(nbytes)`` after each file. Returns file names."""
    _, plan = plan_scheme(state, SCHEME, config, model_class)
    leaves = {path: (state[name], t) for name, path, t in plan}
    order = sorted(leaves)  # the order tensors appear in the file (sorted tree), so shards are contiguous
    shard_plan = shards.ShardedWrite(directory, WEIGHTS_NAME, [(p, np.asarray(leaves[p][0]).nbytes) for p in order],
                                     shard_size)
    for file, keys in shard_plan:
        _save_tree(file, {k: leaves[k] for k in keys})
        report(progress, shard_plan.nbytes(keys))
    return shard_plan.finish()


FORMAT = Format("flax-msgpack", (WEIGHTS_NAME, INDEX_NAME), read, write,
                "Hugging Face Flax (flax.serialization msgpack)", patterns=("*.msgpack",), shardable=True)

__all__ = ["read", "write", "load_file", "read_tensors", "FORMAT", "WEIGHTS_NAME", "INDEX_NAME", "ALLOWED_DTYPES"]
