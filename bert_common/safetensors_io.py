"""The safetensors format in pure NumPy: validated reads (memory-mapped), atomic writes.

Layout: 8-byte little-endian header length N, N bytes of JSON ``{name: {dtype, shape, data_offsets}}``
(plus optional ``__metadata__``), then the tensor bytes. Every header is checked against the file size
and against itself (offsets in range, contiguous, no overlap, byte counts equal to shape x itemsize)
before any tensor is returned, so a truncated or inconsistent file is refused up front.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import numpy as np

from bert_common.io_utils import atomic_file

try:  # bfloat16 lives in ml_dtypes (a dependency of the package); NumPy has none.
    import ml_dtypes
    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a declared dependency
    _BF16 = None

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
if _BF16 is not None:
    _DTYPES["BF16"] = _BF16
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is truncated, inconsistent or otherwise unreadable; names the file."""


def dtype_name(dtype) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _NAMES[dt]
    except KeyError:
        raise ValueError(f"dtype {dt} cannot be stored in safetensors (supported: {sorted(_DTYPES)})") from None


def read_header(path: str) -> tuple[dict, int]:
    """(header dict without ``__metadata__`` removed, data start offset). Validates against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} exceeds the file size {size} (truncated?)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    start = 8 + n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            b, e = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has an invalid header entry {info!r}") from None
        want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if e - b != want or b < 0:
            raise CheckpointError(f"{path}: tensor {name!r} spans {e - b} bytes but {shape} x {dt} needs {want}")
        spans.append((b, e, name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise CheckpointError(f"{path}: tensor {name!r} starts at {b}, expected {pos} (gap or overlap)")
        pos = e
    if start + pos != size:
        raise CheckpointError(f"{path}: data section is {size - start} bytes but the header describes {pos} "
                              f"(truncated or padded file)")
    return header, start


def load_file(path: str | os.PathLike, mmap: bool = True) -> dict[str, np.ndarray]:
    """``{name: array}`` in file order. With ``mmap`` the arrays are read-only views of the file."""
    path = os.fspath(path)
    header, start = read_header(path)
    names = [k for k in header if k != "__metadata__"]
    if mmap and names and os.path.getsize(path) > start:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        with open(path, "rb") as f:
            buf = np.frombuffer(f.read(), dtype=np.uint8)
    out = {}
    for name in names:
        info = header[name]
        dt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        out[name] = buf[start + b:start + e].view(dt).reshape(info["shape"])
    return out


def metadata(path: str | os.PathLike) -> dict[str, str]:
    header, _ = read_header(os.fspath(path))
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
        nbytes = a.size * a.dtype.itemsize
        header[name] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    with atomic_file(os.fspath(path), "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(np.ascontiguousarray(a).tobytes() if a.size else b"")
    return 8 + len(raw) + offset
