"""PyTorch ``pytorch_model.bin`` (single or sharded), read without executing code.

Reading uses ``torch.load(weights_only=True)``: the restricted unpickler accepts tensors, storages and
plain containers only, so a pickle that would import and call anything (``os.system``...) is refused
with ``CheckpointError`` before any of it runs. Zip-format files are memory-mapped. Names are
canonical already (HF PyTorch state dicts), so no scheme is applied. Only this format needs torch.
"""
from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from typing import Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.formats import require
from bert_common.io_utils import atomic_file, atomic_write_text
from bert_common.safetensors_io import CheckpointError

WEIGHTS_NAME = "pytorch_model.bin"
INDEX_NAME = "pytorch_model.bin.index.json"


def _torch():
    return require("torch", "torch", "pytorch")


def _to_numpy(t) -> np.ndarray:
    """torch.Tensor -> np.ndarray sharing memory where NumPy has the dtype (bf16 via ml_dtypes)."""
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def load_file(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` from one ``.bin`` file; CheckpointError for unsafe, truncated or non-tensor content."""
    torch = _torch()
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        # weights_only's unpickler refuses any global it does not allow before calling it.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: the pickle needs code execution, which "
                              f"weights_only loading forbids ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        out[name] = _to_numpy(t)
    return out


def read(path: str, config: BertConfig | None = None, **_: object) -> dict[str, np.ndarray]:
    """Canonical state dict from a directory (single or sharded), a ``.bin`` file or a shard index."""
    from bert_common.checkpoint import read_sharded_index
    if os.path.isdir(path):
        single = os.path.join(path, WEIGHTS_NAME)
        if os.path.isfile(single):
            return load_file(single)
        return read_sharded_index(os.path.join(path, INDEX_NAME), load_file)
    if path.endswith(".index.json"):
        return read_sharded_index(path, load_file)
    return load_file(path)


def _tensor(arr: np.ndarray):
    torch = _torch()
    a = np.ascontiguousarray(arr)
    with warnings.catch_warnings():  # memory-mapped inputs are read-only; torch.save only reads them
        warnings.simplefilter("ignore", UserWarning)
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)


def _save(tensors: Mapping[str, np.ndarray], path: str, progress=None) -> None:
    torch = _torch()
    with atomic_file(path, "wb") as f:
        torch.save({n: _tensor(a) for n, a in tensors.items()}, f)
    if progress is not None:
        progress(int(sum(np.asarray(a).nbytes for a in tensors.values())))


def write(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], shard_size=None,
          progress=None, **_: object) -> list[str]:
    """Write ``pytorch_model.bin`` (or HF-named shards + ``pytorch_model.bin.index.json``);
    ``progress(nbytes)`` is called after each file."""
    from bert_common.checkpoint import _shards, parse_size
    shards = _shards(state, parse_size(shard_size) if shard_size else None)
    if len(shards) == 1:
        _save(shards[0], os.path.join(directory, WEIGHTS_NAME), progress)
        return [WEIGHTS_NAME]
    files, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        _save(shard, os.path.join(directory, file), progress)
        files.append(file)
        for name, arr in shard.items():
            weight_map[name] = file
            total += np.asarray(arr).nbytes
    atomic_write_text(os.path.join(directory, INDEX_NAME),
                      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return files + [INDEX_NAME]
