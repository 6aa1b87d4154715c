"""The safetensors format in pure NumPy: validated, memory-mapped reads; atomic writes; HF sharding.

Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}}``
(plus optional ``__metadata__``), then the tensor bytes. A read opens the file once: the header is
read from that descriptor and checked against the descriptor's size and against itself (integer shapes
and offsets, dtypes from ``ALLOWED_DTYPES``, byte counts equal to shape x itemsize, offsets contiguous
with no gap or overlap, tensor count and header size under the caps, shapes against the config when
known), and only then is the *same* descriptor memory-mapped. A file replaced on disk in between cannot
be read half old, half new.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import shards
from bert_common.formats.base import (MAX_HEADER_BYTES, CheckpointError, Format, bfloat16, check_dtype,
                                      check_shape, count_cap, expected_shapes, nbytes, report)
from bert_common.io_utils import atomic_file

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# safetensors dtype -> NumPy name, for every dtype a reader accepts (integers only for buffers).
ALLOWED_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
                  "I64": "int64", "I32": "int32"}
# Every dtype the writer can store (it writes what it is given; readers decide what is a weight), plus
# "BF16", whose NumPy dtype comes from ml_dtypes, imported only when a bf16 tensor is met (formats.base).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    if dt in _NAMES:
        return _NAMES[dt]
    if dt.name == "bfloat16" and dt == bfloat16():  # a bf16 array means ml_dtypes is loaded already
        return "BF16"
    raise ValueError(f"dtype {dt} cannot be stored in safetensors (supported: {sorted([*_DTYPES, 'BF16'])})")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _header(fd: int, path: str, size: int, expected: Mapping | None) -> tuple[dict, list, int]:
    """(raw header, [(name, np dtype, shape, begin, end)], data start) read from ``fd`` and validated."""
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: header length {n} is over the cap of {MAX_HEADER_BYTES} bytes "
                              f"(MAX_HEADER_BYTES)")
    if 8 + n > size:
        raise CheckpointError(f"{path}: header length {n} exceeds the file size {size} (truncated?)")
    raw = os.pread(fd, n, 8)
    count_cap(path, raw.count(b'"data_offsets"'))  # before parsing: a cheap upper bound on the entries
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed safetensors header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    count_cap(path, len(header))
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    start, data = 8 + n, size - 8 - n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid header entry {str(info)[:200]}")
        offsets, shape = info["data_offsets"], info["shape"]
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(x) for x in offsets):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r}; expected two integers")
        if not isinstance(info["dtype"], str):
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']!r}; expected a string")
        np_name = check_dtype(path, name, info["dtype"], ALLOWED_DTYPES, "safetensors")
        dt = bfloat16() if np_name == "bfloat16" else np.dtype(np_name).newbyteorder("<")
        want = nbytes(path, name, shape, dt.itemsize)
        b, e = offsets
        if not 0 <= b <= e <= data:
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets} outside the "
                                  f"{data}-byte data section (truncated?)")
        if e - b != want:
            raise CheckpointError(f"{path}: tensor {name!r} spans {e - b} bytes but {tuple(shape)} x "
                                  f"{info['dtype']} needs {want}")
        check_shape(path, name, tuple(shape), expected)
        entries.append((name, dt, tuple(shape), b, e))
    pos = 0
    for name, _, _, b, e in sorted(entries, key=lambda x: (x[3], x[4])):
        if b != pos:
            raise CheckpointError(f"{path}: tensor {name!r} starts at {b}, expected {pos} (gap or overlap)")
        pos = e
    if pos != data:
        raise CheckpointError(f"{path}: data section is {data} bytes but the header describes {pos} "
                              f"(truncated or padded file)")
    return header, entries, start


def read_header(path: str | os.PathLike, config: BertConfig | None = None) -> tuple[dict, int]:
    """(header dict, data start offset), validated as a read would."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        header, _, start = _header(fd, path, os.fstat(fd).st_size,
                                   expected_shapes(config) if config is not None else None)
    finally:
        os.close(fd)
    return header, start


def load_file(path: str | os.PathLike, config: BertConfig | None = None, mmap_: bool = True,
              expected: Mapping | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` in header order, validated first (``config``: shapes checked too; ``expected``:
    its ``expected_shapes``, when already computed). With ``mmap_`` the arrays are read-only views of
    one mapping of the descriptor that was validated."""
    path = os.fspath(path)
    if expected is None and config is not None:
        expected = expected_shapes(config)
    try:
        fd = os.open(path, os.O_RDONLY)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a safetensors file") from None
    try:
        size = os.fstat(fd).st_size
        _, entries, start = _header(fd, path, size, expected)
        if not entries:
            return {}
        if size > start and mmap_:
            buf = np.frombuffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        else:
            raw = bytearray(size - start)
            got = os.preadv(fd, [raw], start) if size > start else 0
            if got != size - start:
                raise CheckpointError(f"{path}: file shrank while reading (expected {size - start} bytes)")
            buf = np.frombuffer(bytes(start) + bytes(raw), dtype=np.uint8)
        if len(buf) != size:
            raise CheckpointError(f"{path}: file changed size while mapping")
    finally:
        os.close(fd)
    return {name: buf[start + b:start + e].view(dt).reshape(shape) for name, dt, shape, b, e in entries}


def metadata(path: str | os.PathLike) -> dict[str, str]:
    header, _ = read_header(path)
    return dict(header.get("__metadata__") or {})


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> int:
    """Write atomically (temp file, then rename); returns bytes written. Arrays are written C-contiguous."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        size = a.size * a.dtype.itemsize
        header[name] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + size]}
        offset += size
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    with atomic_file(os.fspath(path), "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(np.ascontiguousarray(a).tobytes() if a.size else b"")
    return 8 + len(raw) + offset


# ---------------------------------------------------------------------------------------------- format
def read(path: str, config: BertConfig | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from a directory (single or sharded), a ``.safetensors`` file or an index."""
    return shards.read_canonical(path, WEIGHTS_NAME, INDEX_NAME, load_file, expected_shapes, config)


def write(directory: str, config: BertConfig | None, state: Mapping[str, np.ndarray], shard_size=None,
          progress=None, metadata: Mapping[str, str] | None = None, **_: object) -> list[str]:
    """Write ``model.safetensors`` (or HF-named shards + ``model.safetensors.index.json``) into
    ``directory``; ``progress(nbytes)`` after each file. Returns the file names."""
    meta = {"format": "pt", **(metadata or {})}
    plan = shards.ShardedWrite(directory, WEIGHTS_NAME, [(n, np.asarray(a).nbytes) for n, a in state.items()],
                               shard_size)
    for path, keys in plan:
        save_file({k: state[k] for k in keys}, path, meta)
        report(progress, plan.nbytes(keys))
    return plan.finish()


FORMAT = Format("safetensors", (WEIGHTS_NAME, INDEX_NAME), read, write, "Hugging Face safetensors (default)",
                patterns=("*.safetensors",), shardable=True)

__all__ = ["read", "write", "load_file", "save_file", "read_header", "metadata", "dtype_name", "FORMAT",
           "WEIGHTS_NAME", "INDEX_NAME", "ALLOWED_DTYPES"]
