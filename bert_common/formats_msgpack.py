"""Hugging Face Flax ``flax_model.msgpack``: the ``flax.serialization`` encoding, decoded with msgpack
and NumPy alone (no jax/flax import, no model built).

Encoding (flax.serialization, checked against it in tests/test_formats.py): the parameter tree is a
msgpack map of maps with string keys; each array leaf is msgpack ext type 1 whose payload is itself
``packb((shape, dtype name, C-order bytes))``; ext 3 is a NumPy scalar in the same encoding; an array
over 2**30 bytes is split into ``{"__msgpack_chunked_array__": True, "shape": {"0": ..}, "chunks":
{"0": flat part, ...}}``. HF's tree is the Flax module tree, identical to the ``flax`` naming scheme
(head models under ``bert/``). Sharded HF Flax checkpoints (``flax_model.msgpack.index.json``) hold
"/"-joined keys in the weight map.
"""
from __future__ import annotations

import io
import os
from typing import Any, Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import atomic_path, match_scheme, plan_scheme, require, require_config, transposed
from bert_common.safetensors_io import CheckpointError

WEIGHTS_NAME = "flax_model.msgpack"
INDEX_NAME = "flax_model.msgpack.index.json"
SCHEME = "flax"
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
MAX_CHUNK_SIZE = 2**30  # flax.serialization's limit per msgpack array payload
_CHUNKED = "__msgpack_chunked_array__"


def _msgpack():
    return require("msgpack", "flax", "flax-msgpack")


def _dtype(name: bytes | str) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin8 / bin16 / bin32 markers


def _decode_array(data: bytes) -> np.ndarray:
    """Array from a flax record ``packb((shape, dtype name, bytes))``, as a view of ``data``.

    The record header is parsed with msgpack and the bin marker by hand, so the array bytes are not
    copied a second time (``unpackb`` would copy them into a new ``bytes``).
    """
    msgpack = _msgpack()
    try:
        up = msgpack.Unpacker(io.BytesIO(data), raw=True)
        if up.read_array_header() != 3:
            raise ValueError("not a (shape, dtype, bytes) triple")
        shape = tuple(int(d) for d in up.unpack())
        dt = _dtype(up.unpack())
        pos = up.tell()
        width = _BIN_LENGTH_BYTES[data[pos]]
        n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
        start = pos + 1 + width
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException, msgpack.OutOfData) as e:
        raise CheckpointError(f"malformed array record ({type(e).__name__}: {e})") from None
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if n != want or start + n != len(data):
        raise CheckpointError(f"array record of shape {shape} {dt} holds {min(n, len(data) - start)} bytes, "
                              f"needs {want}")
    return np.frombuffer(data, dtype=dt, count=want // dt.itemsize if dt.itemsize else 0,
                         offset=start).reshape(shape)


def _ext_hook(code: int, data: bytes):
    if code in (EXT_NDARRAY, EXT_NPSCALAR):
        return _decode_array(data)
    raise CheckpointError(f"unsupported msgpack ext type {code} (only flax arrays are weights)")


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], file: str) -> None:
    if isinstance(tree, dict) and _CHUNKED in tree:
        try:
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            flat = np.concatenate([tree["chunks"][str(i)] for i in range(len(tree["chunks"]))])
            out[prefix] = flat.reshape(shape)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{file}: malformed chunked array at {prefix!r} ({e})") from None
        return
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flatten(v, f"{prefix}/{k}" if prefix else str(k), out, file)
        return
    if not isinstance(tree, np.ndarray):
        raise CheckpointError(f"{file}: leaf {prefix!r} is a {type(tree).__name__}, not an array")
    out[prefix] = tree


def load_file(file: str) -> dict[str, np.ndarray]:
    """``{"/"-joined tree path: array}`` from one msgpack file, streamed (no second copy of the file)."""
    msgpack = _msgpack()
    out: dict[str, np.ndarray] = {}
    with open(file, "rb") as f:
        unpacker = msgpack.Unpacker(f, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                                    max_buffer_size=2**31 - 1)
        try:
            tree = unpacker.unpack()
        except msgpack.OutOfData:
            raise CheckpointError(f"{file}: truncated msgpack file") from None
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}") from None
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CheckpointError(f"{file}: malformed msgpack file ({e})") from None
        try:
            unpacker.unpack()
        except msgpack.OutOfData:
            pass
        else:
            raise CheckpointError(f"{file}: trailing data after the parameter tree")
    if not isinstance(tree, dict):
        raise CheckpointError(f"{file}: top level is a {type(tree).__name__}, not a parameter tree")
    _flatten(tree, "", out, file)
    return out


def read_tensors(path: str) -> dict[str, np.ndarray]:
    if os.path.isdir(path):
        single = os.path.join(path, WEIGHTS_NAME)
        if os.path.isfile(single):
            return load_file(single)
        path = os.path.join(path, INDEX_NAME)
    if path.endswith(".index.json"):
        from bert_common.checkpoint import read_sharded_index
        return read_sharded_index(path, load_file)
    return load_file(path)


def read(path: str, config: BertConfig | None, model_class: str | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from ``flax_model.msgpack`` (directory, file or shard index)."""
    config = require_config(path, config)
    return match_scheme(read_tensors(path), SCHEME, config, model_class, source=path)


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


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], model_class: str | None = None,
          progress=None, **_: object) -> list[str]:
    """Write ``flax_model.msgpack`` as ``flax.serialization.to_bytes`` would, one tensor at a time.

    ``progress(nbytes)`` is called after each tensor is written."""
    msgpack = _msgpack()
    _, plan = plan_scheme(state, SCHEME, config, model_class)
    tree: dict = {}  # nested dict of path parts; leaves (canonical name, transpose)
    for name, path, transpose in plan:
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = (name, transpose)
    packer = msgpack.Packer(use_bin_type=True)

    def emit(f, node) -> None:
        f.write(packer.pack_map_header(len(node)))
        # Sorted keys, as jax's pytree flattening leaves a Flax parameter dict: byte-identical to flax.
        for key, value in sorted(node.items()):
            f.write(packer.pack(key))
            if isinstance(value, dict):
                emit(f, value)
                continue
            arr = transposed(state[value[0]], value[1])
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
            if progress is not None:
                progress(arr.nbytes)

    with atomic_path(os.path.join(directory, WEIGHTS_NAME)) as tmp:
        with open(tmp, "wb") as f:
            emit(f, tree)
            f.flush()
            os.fsync(f.fileno())
    return [WEIGHTS_NAME]


__all__ = ["read", "write", "load_file", "read_tensors", "WEIGHTS_NAME", "INDEX_NAME"]
