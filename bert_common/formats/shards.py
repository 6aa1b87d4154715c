"""The one shard planner and ``*.index.json`` reader / writer, used by every shardable format.

Hugging Face's layout (``transformers`` 4.57.1: ``shard_checkpoint`` / ``tf_shard_checkpoint`` /
``flax_shard_checkpoint``): tensors are taken in order and a new shard starts when the next tensor would
take the current one over the limit (a tensor larger than the limit gets a shard of its own); shard ``i``
of ``n`` is ``{stem}-{i:05d}-of-{n:05d}{ext}`` (``model-00001-of-00003.safetensors``,
``tf_model-00001-of-00003.h5``); the index ``{weights name}.index.json`` is
``{"metadata": {"total_size": bytes}, "weight_map": {tensor key: shard file}}``, written with
``indent=2`` (HF's TF and Flax writers also sort keys; we sort for every format).
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Mapping, Sequence

from bert_common.formats.base import MAX_HEADER_BYTES, CheckpointError, count_cap
from bert_common.io_utils import atomic_write_text

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000; ``"500MiB"``; plain ints pass through. Raises ValueError naming the text."""
    if isinstance(text, int) and not isinstance(text, bool):
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


def plan(sizes: Sequence[tuple[str, int]], shard_size: str | int | None) -> list[list[str]]:
    """Keys grouped into shards of at most ``shard_size`` bytes, in the given order (HF's rule; never an
    empty shard). ``sizes``: ``[(key, nbytes)]``. No limit -> one shard."""
    if shard_size is None:
        return [[k for k, _ in sizes]]
    limit = parse_size(shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for key, n in sizes:
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def shard_file(weights_name: str, i: int, n: int) -> str:
    """``tf_model.h5`` -> ``tf_model-00002-of-00005.h5`` (shard ``i`` of ``n``, 1-based)."""
    stem, ext = os.path.splitext(weights_name)
    return f"{stem}-{i:05d}-of-{n:05d}{ext}"


def index_name(weights_name: str) -> str:
    return weights_name + ".index.json"


def write_index(directory: str, weights_name: str, weight_map: Mapping[str, str], total_size: int) -> str:
    """Write ``{weights_name}.index.json`` atomically; returns its file name."""
    name = index_name(weights_name)
    atomic_write_text(os.path.join(directory, name),
                      json.dumps({"metadata": {"total_size": int(total_size)}, "weight_map": dict(weight_map)},
                                 indent=2, sort_keys=True) + "\n")
    return name


def read_index(index: str) -> dict[str, list[str]]:
    """``{shard file: [keys]}`` from an index, in shard order; every shard checked to exist first.

    CheckpointError for a malformed, oversized or inconsistent index (names the index and the entry)."""
    try:
        size = os.path.getsize(index)
    except OSError as e:
        raise CheckpointError(f"{index}: cannot read the shard index ({e.strerror})") from None
    if size > MAX_HEADER_BYTES:
        raise CheckpointError(f"{index}: shard index is {size} bytes, over the cap of {MAX_HEADER_BYTES} "
                              f"(MAX_HEADER_BYTES)")
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}, not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{index}: malformed shard index ({type(e).__name__}: {e})") from None
    count_cap(index, len(weight_map))
    directory = os.path.dirname(index)
    by_file: dict[str, list[str]] = {}
    for key, file in weight_map.items():
        if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard {file!r} for {key} is not a plain file name")
        by_file.setdefault(file, []).append(key)
    for file in by_file:  # check every shard exists before reading any
        if not os.path.isfile(os.path.join(directory, file)):
            raise CheckpointError(f"{index}: shard {file} is missing")
    return by_file


class ShardedRead:
    """Reading an index, driven by the format module (no callback into it)::

        merged = ShardedRead(index)              # index validated, every shard checked to exist
        for file in merged.files:
            merged.add(file, load_file(file))    # each shard must hold exactly its tensors
        return merged.result()

    ``key`` maps an index key to the shard's own key (HF TF shards drop the model scope). Tensors come
    back in shard-file order, each shard in its own order: the order they were written."""

    def __init__(self, index: str, key: Callable[[str], str] = lambda k: k):
        self.index = index
        directory = os.path.dirname(index)
        by_file = read_index(index)
        self._want = {os.path.join(directory, f): {key(k) for k in keys} for f, keys in by_file.items()}
        self._counts = {os.path.join(directory, f): len(keys) for f, keys in by_file.items()}
        self.files = sorted(self._want)
        self._out: dict = {}

    def add(self, file: str, shard: Mapping) -> None:
        want = self._want[file]
        if set(shard) != want or len(want) != self._counts[file]:
            extra, lost = sorted(set(shard) - want), sorted(want - set(shard))
            raise CheckpointError(f"{self.index}: shard {os.path.basename(file)} disagrees with the index "
                                  f"(in shard only: {extra[:5]}, in index only: {lost[:5]})")
        if not self._out.keys().isdisjoint(shard):
            raise CheckpointError(f"{self.index}: shard {os.path.basename(file)} repeats a tensor of another shard")
        self._out.update(shard)

    def result(self) -> dict:
        return self._out


class ShardedWrite:
    """Writing shards, driven by the format module (no callback into it)::

        plan = ShardedWrite(directory, WEIGHTS_NAME, [(key, nbytes), ...], shard_size)
        for path, keys in plan:
            save(path, keys)                     # the format's own writer
            report(progress, plan.nbytes(keys))
        return plan.finish()                     # the index, written last; all file names

    One shard -> ``weights_name`` alone (HF writes no index then); several -> HF-named shards, then the
    index, written last so a reader never sees an index before its shards. ``index_key`` maps a key to
    its name in the index (HF TF adds the model scope)."""

    def __init__(self, directory: str, weights_name: str, items: Sequence[tuple[str, int]],
                 shard_size: str | int | None, index_key: Callable[[str], str] = lambda k: k):
        self.directory, self.weights_name, self.index_key = directory, weights_name, index_key
        self._sizes = dict(items)
        self.shards = plan(items, shard_size)
        n = len(self.shards)
        self.names = [weights_name] if n == 1 else [shard_file(weights_name, i, n) for i in range(1, n + 1)]

    def __iter__(self):
        for name, keys in zip(self.names, self.shards):
            yield os.path.join(self.directory, name), keys

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1

    def nbytes(self, keys: Sequence[str]) -> int:
        return int(sum(self._sizes[k] for k in keys))

    def finish(self) -> list[str]:
        if not self.sharded:
            return list(self.names)
        weight_map = {self.index_key(k): name for name, keys in zip(self.names, self.shards) for k in keys}
        return self.names + [write_index(self.directory, self.weights_name, weight_map, sum(self._sizes.values()))]


__all__ = ["read_canonical", "parse_size", "plan", "shard_file", "index_name", "write_index", "read_index", "ShardedRead",
           "ShardedWrite"]


def read_canonical(path: str, weights_name: str, index_name: str, load_file: Callable, expected_shapes,
                   config=None) -> dict:
    """A canonically named format's state dict from a directory (single file or shards), one weight file
    or a shard index: the read both safetensors and pytorch share. ``load_file(file, config, expected=...)``
    reads one file; ``expected_shapes(config)`` gives the shapes each shard is checked against."""
    if os.path.isdir(path):
        single = os.path.join(path, weights_name)
        path = single if os.path.isfile(single) else os.path.join(path, index_name)
    if not path.endswith(".index.json"):
        return load_file(path, config)
    merged = ShardedRead(path)
    expected = expected_shapes(config) if config is not None else None
    for file in merged.files:
        merged.add(file, load_file(file, config, expected=expected))
    return merged.result()

