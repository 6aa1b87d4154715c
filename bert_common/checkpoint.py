"""Hugging Face-style checkpoint directories without any framework.

A directory holds ``config.json`` and weights in one of the formats registered in
``bert_common.formats`` (safetensors single or sharded by default). ``load_checkpoint`` returns the
config and a canonical ``{name: np.ndarray}`` state dict; ``save_checkpoint`` writes ``config.json``,
``model.safetensors`` (or shards plus ``model.safetensors.index.json``) and copies tokenizer files, all
into a temporary directory that is renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Mapping

import numpy as np

from bert_common import safetensors_io
from bert_common.config import CONFIG_NAME, BertConfig
from bert_common.io_utils import atomic_directory, atomic_write_text
from bert_common.safetensors_io import CheckpointError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000; ``"500MiB"``; plain ints pass through. Raises ValueError naming the text."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"shard size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"shard size {text!r} is not a size like '2GB', '500MB' or '100MiB'")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"shard size must be positive, got {text!r}")
    return n


# ---------------------------------------------------------------------------------------------- reading
def read_safetensors_dir(path: str) -> dict[str, np.ndarray]:
    """Weights from ``model.safetensors`` or a sharded index in ``path``."""
    index = os.path.join(path, SAFE_INDEX)
    single = os.path.join(path, SAFE_WEIGHTS)
    if os.path.isfile(single):
        return safetensors_io.load_file(single)
    return read_sharded_index(index, safetensors_io.load_file)


def read_sharded_index(index: str, load_shard) -> dict[str, np.ndarray]:
    """Read a ``*.index.json`` weight map; every shard must hold exactly the tensors the map assigns it."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: malformed shard index ({e})") from None
    directory = os.path.dirname(index)
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if os.path.basename(file) != file:
            raise CheckpointError(f"{index}: shard {file!r} for {name} is not a plain file name")
        by_file.setdefault(file, []).append(name)
    for file in by_file:  # check every shard exists before reading any
        if not os.path.isfile(os.path.join(directory, file)):
            raise CheckpointError(f"{index}: shard {file} is missing")
    out: dict[str, np.ndarray] = {}
    for file, names in by_file.items():
        shard = load_shard(os.path.join(directory, file))
        if set(shard) != set(names):
            extra, lost = sorted(set(shard) - set(names)), sorted(set(names) - set(shard))
            raise CheckpointError(f"{index}: shard {file} disagrees with the index (in shard only: {extra[:5]}, "
                                  f"in index only: {lost[:5]})")
        out.update(shard)
    return {n: out[n] for n in weight_map}


def load_state_dict(path: str | os.PathLike, config: BertConfig | None = None) -> tuple[dict[str, np.ndarray], str]:
    """(canonical state dict, format name) from a directory or weight file in any registered format."""
    from bert_common import formats
    return formats.read_weights(os.fspath(path), config)


def load_checkpoint(path: str | os.PathLike) -> tuple[BertConfig, dict[str, np.ndarray], str]:
    """(config, canonical state dict, format name) from a checkpoint directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = BertConfig.from_pretrained(path)
    state, fmt = load_state_dict(path, config)
    return config, state, fmt


# ---------------------------------------------------------------------------------------------- writing
def _shards(state: Mapping[str, np.ndarray], max_bytes: int | None) -> list[dict[str, np.ndarray]]:
    if not max_bytes:
        return [dict(state)]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in state.items():
        n = np.asarray(arr).nbytes
        if shards[-1] and size + n > max_bytes:  # a tensor larger than the limit gets a shard of its own
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += n
    return shards


def write_safetensors(directory: str, state: Mapping[str, np.ndarray], shard_size: str | int | None = None,
                      metadata: Mapping[str, str] | None = None) -> list[str]:
    """Write ``model.safetensors`` (or shards + index) into an existing directory; returns file names."""
    meta = {"format": "pt", **(metadata or {})}
    shards = _shards(state, parse_size(shard_size) if shard_size else None)
    if len(shards) == 1:
        safetensors_io.save_file(shards[0], os.path.join(directory, SAFE_WEIGHTS), meta)
        return [SAFE_WEIGHTS]
    files, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors_io.save_file(shard, os.path.join(directory, file), meta)
        files.append(file)
        for name, arr in shard.items():
            weight_map[name] = file
            total += np.asarray(arr).nbytes
    atomic_write_text(os.path.join(directory, SAFE_INDEX),
                      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return files + [SAFE_INDEX]


def copy_tokenizer_files(src: str | None, dst: str) -> list[str]:
    copied = []
    if src and os.path.isdir(src):
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
                copied.append(name)
    return copied


def save_checkpoint(path: str | os.PathLike, config: BertConfig, state: Mapping[str, np.ndarray],
                    shard_size: str | int | None = None, tokenizer_from: str | None = None,
                    architectures: list[str] | None = None) -> str:
    """Write ``config.json`` + safetensors weights (+ tokenizer files) into ``path``, as HF's
    ``save_pretrained`` does: other files in ``path`` are kept; each written file appears atomically
    (temp file, then rename). Weights go first and the config last, so a crash never leaves a new
    config beside old weights. For an all-or-nothing directory use ``save_checkpoint_dir``.
    """
    path = os.fspath(path)
    cfg = config
    if architectures is not None:
        cfg = BertConfig.from_dict(config.to_dict(), architectures=architectures)
    os.makedirs(path, exist_ok=True)
    # A stale weight set of the other layout would shadow or confuse the new one.
    stale = SAFE_INDEX if not shard_size else SAFE_WEIGHTS
    written = write_safetensors(path, state, shard_size)
    if stale not in written and os.path.isfile(os.path.join(path, stale)):
        os.unlink(os.path.join(path, stale))
    copy_tokenizer_files(tokenizer_from, path)
    cfg.save_pretrained(path)
    return path


def save_checkpoint_dir(path: str | os.PathLike, config: BertConfig, state: Mapping[str, np.ndarray],
                        overwrite: bool = False, **kwargs) -> str:
    """Like ``save_checkpoint`` but the whole directory is built in a temp sibling and renamed into
    place; an existing ``path`` is refused unless ``overwrite``."""
    path = os.fspath(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        save_checkpoint(tmp, config, state, **kwargs)
    return path
