"""PyTorch ``pytorch_model.bin`` (single or sharded), read without executing code.

Reading opens the file once. A zip-format file (``torch.save`` since 1.6) is inspected first from that
descriptor: entry count under ``MAX_TENSORS``-based caps, declared sizes bounded (by the file for stored
entries, by the config's largest checkpoint for compressed ones). Entries stored uncompressed are
memory-mapped through ``/proc/self/fd/N`` (the same open file that was inspected); a file with any
DEFLATE-compressed entry (legal zip, written by some tools) is never mapped: it is decompressed by
``torch.load(weights_only=True)`` reading the same file object. The restricted unpickler accepts
tensors, storages and plain containers only, so a pickle that would import and call anything
(``os.system``...) is refused with ``CheckpointError`` before any of it runs. Every tensor's dtype
(``ALLOWED_DTYPES``) and, with a config, shape is checked before its data is touched.
Names are canonical already (HF PyTorch state dicts). Only this format needs torch.
"""
from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import shards
from bert_common.formats.base import (CheckpointError, Format, bfloat16, check_dtype, check_shape,
                                      count_cap, expected_shapes, report, require)
from bert_common.io_utils import atomic_file

WEIGHTS_NAME = "pytorch_model.bin"
INDEX_NAME = "pytorch_model.bin.index.json"
# torch dtype name -> NumPy name, for every dtype a reader accepts (integers only for buffers).
ALLOWED_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64",
                  "int64": "int64", "int32": "int32"}
_ZIP_SLACK = 1 << 20  # pickle, version records: what a zip holds besides tensor bytes


def _torch():
    return require("torch", "torch", "pytorch")


def _to_numpy(t) -> np.ndarray:
    """torch.Tensor -> np.ndarray sharing memory where NumPy has the dtype (bf16 via ml_dtypes)."""
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16())
    return t.numpy()


def _inspect_zip(f, path: str, size: int, config: BertConfig | None) -> bool:
    """Validate the zip directory of open file ``f``; True when every entry is stored (mappable)."""
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt zip directory ({type(e).__name__}: {e})") from None
    count_cap(path, len(infos) // 2)  # one record per tensor storage plus a handful of bookkeeping entries
    stored = all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    declared = sum(i.file_size for i in infos)
    if stored:
        if declared > size:
            raise CheckpointError(f"{path}: zip entries declare {declared} bytes, more than the {size}-byte file")
        return True
    # A compressed entry's size is what decompression produces: bound it before torch inflates it.
    unknown = [i.filename for i in infos if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]
    if unknown:
        raise CheckpointError(f"{path}: zip entry {unknown[0]!r} uses an unsupported compression method")
    if config is not None:
        largest = sum(8 * max(int(np.prod(s)) for s in shapes) for shapes in expected_shapes(config).values())
        limit = max(largest + _ZIP_SLACK, size)
        if declared > limit:
            raise CheckpointError(f"{path}: compressed zip entries inflate to {declared} bytes, more than the "
                                  f"{limit}-byte cap for this config (a float64 checkpoint of the largest head)")
    return False


def load_file(path: str, config: BertConfig | None = None, expected: Mapping | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` from one ``.bin`` file; CheckpointError for unsafe, truncated, non-float or
    mis-shaped content (shapes checked against ``config`` when given; ``expected``: its
    ``expected_shapes``, when already computed)."""
    torch = _torch()
    if expected is None and config is not None:
        expected = expected_shapes(config)
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a PyTorch file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        is_zip = zipfile.is_zipfile(f)
        f.seek(0)
        mappable = _inspect_zip(f, path, size, config) if is_zip else False
        f.seek(0)
        proc = f"/proc/self/fd/{f.fileno()}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mappable and os.path.exists(proc):  # map the very file inspected above
                    obj = torch.load(proc, map_location="cpu", weights_only=True, mmap=True)
                else:  # compressed entries are inflated by torch; legacy pickles are read into memory
                    obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # weights_only's unpickler refuses any global it does not allow before calling it.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: refused to load: the pickle needs code execution, which "
                                  f"weights_only loading forbids ({first})") from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                MemoryError, OverflowError, UnicodeDecodeError, zipfile.BadZipFile, struct.error) as e:
            raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    count_cap(path, len(obj))
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        check_dtype(path, name, str(t.dtype).removeprefix("torch."), ALLOWED_DTYPES, "pytorch")
        check_shape(path, name, tuple(t.shape), expected)
        if t.layout != torch.strided or t.is_quantized or t.storage_offset() < 0:
            raise CheckpointError(f"{path}: tensor {name!r} is not a plain dense tensor")
    try:
        return {name: np.ascontiguousarray(_to_numpy(t)) for name, t in obj.items()}
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable tensor data ({e})") from None


def read(path: str, config: BertConfig | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from a directory (single or sharded), a ``.bin`` file or a shard index."""
    return shards.read_canonical(path, WEIGHTS_NAME, INDEX_NAME, load_file, expected_shapes, config)


def _tensor(arr: np.ndarray):
    torch = _torch()
    a = np.ascontiguousarray(arr)
    with warnings.catch_warnings():  # memory-mapped inputs are read-only; torch.save only reads them
        warnings.simplefilter("ignore", UserWarning)
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)


def write(directory: str, config: BertConfig | None, state: Mapping[str, np.ndarray], shard_size=None,
          progress=None, **_: object) -> list[str]:
    """Write ``pytorch_model.bin`` (or HF-named shards + ``pytorch_model.bin.index.json``);
    ``progress(nbytes)`` after each file."""
    torch = _torch()
    plan = shards.ShardedWrite(directory, WEIGHTS_NAME, [(n, np.asarray(a).nbytes) for n, a in state.items()],
                               shard_size)
    for path, keys in plan:
        with atomic_file(path, "wb") as f:
            torch.save({n: _tensor(state[n]) for n in keys}, f)
        report(progress, plan.nbytes(keys))
    return plan.finish()


FORMAT = Format("pytorch", (WEIGHTS_NAME, INDEX_NAME), read, write,
                "PyTorch pickle, read with torch.load(weights_only=True)", patterns=("*.bin",), shardable=True)

__all__ = ["read", "write", "load_file", "FORMAT", "WEIGHTS_NAME", "INDEX_NAME", "ALLOWED_DTYPES"]
