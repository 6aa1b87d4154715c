"""Pretraining shards on disk: safetensors files plus ``manifest.json``, read memory-mapped, no framework.

A dataset is a directory::

    manifest.json
    shard-00001-of-00003.safetensors
    ...

``manifest.json``: ``format`` ("bertrio-pretraining"), ``version`` (1), ``kind`` ("static" or "raw"),
``num_instances``, ``max_seq_length``, ``vocab_size``, ``vocab_hash`` (sha256 of the vocab.txt bytes),
``flags`` (everything that decided the data), ``inputs`` (input file names), ``shards`` (``[{"file",
"num_instances"}]`` in order) and ``arrays`` (name -> dtype).

* **static** shards hold Google's seven features for instances in order (``bert_common.pretraining.google``):
  ``input_ids`` / ``input_mask`` / ``segment_ids`` (n, S) int32, ``masked_lm_positions`` /
  ``masked_lm_ids`` (n, P) int32, ``masked_lm_weights`` (n, P) float32, ``next_sentence_labels`` (n,) int32.
* **raw** shards hold unmasked token blocks for dynamic masking: ``tokens`` (T,) int32 (blocks back to
  back), ``block_offsets`` (n + 1,) int64 (block i is ``tokens[block_offsets[i]:block_offsets[i + 1]]``),
  ``split_points`` (M,) int32 (sentence starts inside blocks, candidate A/B cuts for NSP, relative to
  the block), ``split_offsets`` (n + 1,) int64 (block i's cuts are ``split_points[split_offsets[i]:
  split_offsets[i + 1]]``), ``doc_ids`` (n,) int64 (source document, global). A block is a run of whole
  sentences of one document of at most ``max_seq_length - 3`` tokens (a longer sentence is cut).

``open_dataset(path).batch(indices, epoch)`` gives the batch contract (dict of (B, S) / (B,) int32
arrays with Hugging Face names ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (-100 where
not masked), ``next_sentence_label`` (1 = random next)).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from typing import Iterable, Mapping, Sequence

import numpy as np

from bert_common.formats import safetensors as st
from bert_common.formats.shards import parse_size
from bert_common.io_utils import atomic_write_text
from bert_common.pretraining.masking import IGNORE_INDEX, DynamicMasker, MaskingConfig, example_rng

FORMAT = "bertrio-pretraining"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = "1GB"
STATIC_ARRAYS = {"input_ids": "int32", "input_mask": "int32", "segment_ids": "int32", "masked_lm_positions": "int32",
                 "masked_lm_ids": "int32", "masked_lm_weights": "float32", "next_sentence_labels": "int32"}
RAW_ARRAYS = {"tokens": "int32", "block_offsets": "int64", "split_points": "int32", "split_offsets": "int64",
              "doc_ids": "int64"}
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")


def shard_name(i: int, n: int) -> str:
    """Shard ``i`` (1-based) of ``n``."""
    return f"shard-{i:05d}-of-{n:05d}.safetensors"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ============================================================================================ writing
class ShardWriter:
    """Appends instance arrays to numbered shards in ``directory`` (a temp dir the caller renames).

    ``add(arrays)`` takes a dict of per-instance arrays (first axis = instances) for static data;
    shards are cut every ``rows_per_shard`` instances. File names get their final ``-of-N`` at
    ``finish()``, which writes the manifest and returns it.
    """

    def __init__(self, directory: str, kind: str, shard_size: str | int | None, row_bytes: int):
        self.directory, self.kind = directory, kind
        limit = parse_size(shard_size if shard_size is not None else DEFAULT_SHARD_SIZE)
        self.rows_per_shard = max(1, limit // max(1, row_bytes))
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_rows = 0
        self._files: list[tuple[str, int]] = []

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(arrays.values())))
        start = 0
        while start < n:
            take = min(n - start, self.rows_per_shard - self._pending_rows)
            for k, v in arrays.items():
                self._pending.setdefault(k, []).append(v[start:start + take])
            self._pending_rows += take
            start += take
            if self._pending_rows == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        arrays = {k: np.concatenate(v) for k, v in self._pending.items()}
        self.write_shard(arrays, self._pending_rows)
        self._pending, self._pending_rows = {}, 0

    def write_shard(self, arrays: Mapping[str, np.ndarray], num_instances: int) -> None:
        tmp = os.path.join(self.directory, f"shard-{len(self._files) + 1:05d}.part")
        st.save_file(arrays, tmp)
        self._files.append((tmp, num_instances))

    def finish(self, manifest: dict) -> dict:
        self._flush()
        n = len(self._files)
        shards = []
        for i, (tmp, count) in enumerate(self._files, 1):
            name = shard_name(i, n)
            os.replace(tmp, os.path.join(self.directory, name))
            shards.append({"file": name, "num_instances": count})
        manifest = {"format": FORMAT, "version": VERSION, "kind": self.kind, **manifest,
                    "num_instances": sum(s["num_instances"] for s in shards), "shards": shards,
                    "arrays": STATIC_ARRAYS if self.kind == "static" else RAW_ARRAYS}
        atomic_write_text(os.path.join(self.directory, MANIFEST), json.dumps(manifest, indent=2) + "\n")
        return manifest


def raw_blocks(documents: Iterable[list[list[int]]], max_block: int, doc_base: int = 0) -> dict[str, np.ndarray]:
    """Documents (lists of sentences of ids) -> raw block arrays (module docstring), one document after
    another; a block gathers whole sentences up to ``max_block`` tokens, a longer sentence is cut."""
    tokens: list[int] = []
    block_offsets, split_points, split_offsets, doc_ids = [0], [], [0], []
    for d, doc in enumerate(documents):
        cur: list[int] = []
        cuts: list[int] = []

        def close():
            if cur:
                tokens.extend(cur)
                block_offsets.append(len(tokens))
                split_points.extend(cuts)
                split_offsets.append(len(split_points))
                doc_ids.append(doc_base + d)

        for sent in doc:
            for lo in range(0, len(sent), max_block):
                piece = sent[lo:lo + max_block]
                if cur and len(cur) + len(piece) > max_block:
                    close()
                    cur, cuts = [], []
                if cur:
                    cuts.append(len(cur))
                cur.extend(piece)
        close()
    return {"tokens": np.asarray(tokens, np.int32), "block_offsets": np.asarray(block_offsets, np.int64),
            "split_points": np.asarray(split_points, np.int32), "split_offsets": np.asarray(split_offsets, np.int64),
            "doc_ids": np.asarray(doc_ids, np.int64)}


# ============================================================================================ reading
_DATA_DTYPES = {"I32": np.dtype("<i4"), "I64": np.dtype("<i8"), "F32": np.dtype("<f4")}


def load_shard(path: str) -> dict[str, np.ndarray]:
    """A data shard's arrays, read-only views of one memory mapping, after checking the header against
    the file (dtypes I32 / I64 / F32, offsets inside the data section, byte counts = shape x itemsize).
    (The checkpoint reader of ``bert_common.formats`` admits weight dtypes only; data is integers.)"""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise ValueError(f"{path}: truncated shard (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: malformed safetensors header ({e})") from None
        start, data = 8 + n, size - 8 - n
        buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8) if size else None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _DATA_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dt is None:
            raise ValueError(f"{path}: array {name!r} has dtype {info.get('dtype') if isinstance(info, dict) else info!r}; "
                             f"data shards hold {sorted(_DATA_DTYPES)}")
        shape = tuple(int(d) for d in info["shape"])
        b, e = (int(x) for x in info["data_offsets"])
        if not 0 <= b <= e <= data or e - b != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ValueError(f"{path}: array {name!r} has offsets {[b, e]} that do not fit its shape {shape} "
                             f"or the {data}-byte data section (truncated?)")
        out[name] = buf[start + b:start + e].view(dt).reshape(shape) if e > b else np.zeros(shape, dt)
    return out


def read_manifest(path: str) -> dict:
    """The manifest of a dataset directory (or of ``manifest.json`` itself); ValueError if malformed."""
    mpath = path if os.path.basename(path) == MANIFEST else os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{path!r} is not a pretraining dataset: no {MANIFEST} (make one with "
                                f"`bertrio pretrain-data`)")
    with open(mpath, encoding="utf-8") as f:
        try:
            m = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath}: malformed manifest ({e})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ValueError(f"{mpath}: format {m.get('format')!r} version {m.get('version')!r} is not "
                         f"{FORMAT!r} version {VERSION}")
    if m.get("kind") not in ("static", "raw"):
        raise ValueError(f"{mpath}: kind {m.get('kind')!r} is not 'static' or 'raw'")
    return m


class _Shards:
    """Shards memory-mapped, plus the map from a global row index to (shard, local row)."""

    def __init__(self, directory: str, manifest: dict):
        self.arrays: list[dict[str, np.ndarray]] = []
        counts = []
        want = manifest["arrays"]
        for s in manifest["shards"]:
            path = os.path.join(directory, s["file"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{directory}: shard {s['file']} listed in the manifest is missing")
            arrays = load_shard(path)
            missing = sorted(set(want) - set(arrays))
            if missing:
                raise ValueError(f"{path}: arrays {missing} are missing")
            self.arrays.append(arrays)
            counts.append(int(s["num_instances"]))
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        return shard, indices - self.starts[shard]


class PretrainingDataset:
    """A dataset written by ``bertrio pretrain-data`` (see the module docstring).

    ``len(ds)``: instances (static) or blocks (raw); ``ds.manifest``: the manifest dict;
    ``ds.batch(indices, epoch=0)``: the batch contract for rows ``indices`` ((B,) ints). Static rows
    ignore ``epoch``; raw rows are masked (and paired for NSP) from ``example_rng(seed, epoch, index)``.
    ``seed`` / ``masking`` / ``nsp`` override the manifest's dynamic-masking settings (raw only).
    """

    def __init__(self, path: str, seed: int | None = None, masking: MaskingConfig | None = None,
                 nsp: bool | None = None):
        self.path = os.fspath(path)
        self._seed_arg, self._masking_arg, self._nsp_arg = seed, masking, nsp
        self.manifest = read_manifest(self.path)
        self.kind = self.manifest["kind"]
        self.max_seq_length = int(self.manifest["max_seq_length"])
        self._shards = _Shards(self.path, self.manifest)
        self._n = int(self.manifest["num_instances"])
        if self.kind == "raw":
            dyn = self.manifest.get("dynamic", {})
            self.seed = int(dyn.get("seed", 0) if seed is None else seed)
            self.nsp = bool(dyn.get("nsp", False) if nsp is None else nsp)
            self.masking = masking or MaskingConfig(**dyn.get("masking", {}))
            sp = self.manifest["special_ids"]
            cont = None
            if self.masking.whole_word == "wordpiece":
                cont = np.zeros(self.manifest["vocab_size"], bool)
                cont[np.asarray(self.manifest["continuation_ids"], np.int64)] = True
            self.masker = DynamicMasker(int(self.manifest["vocab_size"]), sp["mask"],
                                        [sp["cls"], sp["sep"], sp["mask"], sp["unk"], sp["pad"]],
                                        self.masking, cont, pad_id=sp["pad"])
            self._special = sp
            docs = [a["doc_ids"] for a in self._shards.arrays]
            self._doc_ids = np.concatenate(docs) if docs else np.zeros(0, np.int64)
        elif seed is not None or masking is not None or nsp is not None:
            raise ValueError(f"{self.path}: seed / masking / nsp apply to raw (dynamic) data; this dataset is "
                             f"static (masks fixed when it was written)")

    def __len__(self) -> int:
        return self._n

    def __reduce__(self):
        # Re-open from the path in another process (a spawned DataLoader worker) instead of pickling maps.
        return (PretrainingDataset, (self.path, self._seed_arg, self._masking_arg, self._nsp_arg))

    def _check(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            bad = idx[(idx < 0) | (idx >= self._n)][0]
            raise ValueError(f"indices contain {int(bad)}, outside [0, {self._n}) (len(dataset))")
        return idx

    def batch(self, indices, epoch: int = 0) -> dict[str, np.ndarray]:
        """The batch contract for rows ``indices``: ``input_ids``, ``attention_mask``, ``token_type_ids``,
        ``labels`` (B, S) int32 and ``next_sentence_label`` (B,) int32."""
        idx = self._check(indices)
        return self._static(idx) if self.kind == "static" else self._raw(idx, int(epoch))

    # ---------------------------------------------------------------------------------- static
    def _static(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        shard, local = self._shards.locate(idx)
        first = self._shards.arrays[0]
        got = {k: np.zeros((len(idx),) + first[k].shape[1:], first[k].dtype) for k in STATIC_ARRAYS}
        for sh in np.unique(shard):
            where = shard == sh
            for k in STATIC_ARRAYS:
                got[k][where] = self._shards.arrays[sh][k][local[where]]
        return static_to_batch(got, self.max_seq_length)

    # ---------------------------------------------------------------------------------- raw
    def block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (L,) int32, split points (K,) int32) of raw block ``index``."""
        sh, loc = self._shards.locate(np.asarray([index], np.int64))
        a = self._shards.arrays[int(sh[0])]
        lo, hi = a["block_offsets"][loc[0]], a["block_offsets"][loc[0] + 1]
        plo, phi = a["split_offsets"][loc[0]], a["split_offsets"][loc[0] + 1]
        return np.asarray(a["tokens"][lo:hi]), np.asarray(a["split_points"][plo:phi])

    def _raw(self, idx: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
        s = self.max_seq_length
        b = len(idx)
        out = {k: np.zeros((b, s), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
        out["labels"] = np.full((b, s), IGNORE_INDEX, np.int32)
        out["next_sentence_label"] = np.zeros(b, np.int32)
        sp = self._special
        for r, i in enumerate(idx):
            rng = example_rng(self.seed, epoch, int(i))
            tokens, cuts = self.block(int(i))
            if self.nsp:
                a, bseg, is_random = self._pair(int(i), tokens, cuts, rng)
                ids = np.concatenate([[sp["cls"]], a, [sp["sep"]], bseg, [sp["sep"]]]).astype(np.int32)
                types = np.zeros(len(ids), np.int32)
                types[len(a) + 2:] = 1
                out["next_sentence_label"][r] = is_random
            else:
                ids = np.concatenate([[sp["cls"]], tokens[:s - 2], [sp["sep"]]]).astype(np.int32)
                types = np.zeros(len(ids), np.int32)
            masked, labels = self.masker.mask_row(ids, rng)
            n = len(ids)
            out["input_ids"][r, :n] = masked
            out["attention_mask"][r, :n] = 1
            out["token_type_ids"][r, :n] = types
            out["labels"][r, :n] = labels
        return out

    def _pair(self, i: int, tokens: np.ndarray, cuts: np.ndarray, rng: np.random.Generator):
        """(A, B, is_random_next) for NSP from block ``i``: cut at a random sentence start (or a random
        token when the block is one sentence); with probability 0.5 — always when nothing is left for
        B — B is instead taken from a random sentence start of a block of another document (ten tries,
        as Google); then the longer side is trimmed from the back to fit ``max_seq_length - 3``.
        Draws: cut, coin, then (random next only) block and start."""
        budget = self.max_seq_length - 3
        n = len(tokens)
        if len(cuts):
            cut = int(cuts[rng.integers(0, len(cuts))])
        else:
            cut = int(rng.integers(1, n)) if n >= 2 else n
        a, b = tokens[:cut], tokens[cut:]
        coin = rng.random()
        is_random = int(len(b) == 0 or coin < 0.5)
        if is_random:
            j = i
            for _ in range(10):
                j = int(rng.integers(0, self._n))
                if self._doc_ids[j] != self._doc_ids[i]:
                    break
            other, ocuts = self.block(j)
            starts = np.concatenate([[0], ocuts]).astype(np.int64)
            start = int(starts[rng.integers(0, len(starts))])
            b = other[start:start + max(1, budget - len(a))]
        while len(a) + len(b) > budget:
            if len(a) > len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        return a, b, is_random


def static_to_batch(f: Mapping[str, np.ndarray], max_seq_length: int) -> dict[str, np.ndarray]:
    """Google's features of B instances -> the batch contract (labels scattered from the positions)."""
    ids = np.asarray(f["input_ids"], np.int32)
    b = ids.shape[0]
    labels = np.full((b, max_seq_length), IGNORE_INDEX, np.int32)
    w = np.asarray(f["masked_lm_weights"]) > 0
    rows = np.broadcast_to(np.arange(b)[:, None], w.shape)
    labels[rows[w], np.asarray(f["masked_lm_positions"])[w]] = np.asarray(f["masked_lm_ids"])[w]
    return {"input_ids": ids, "attention_mask": np.asarray(f["input_mask"], np.int32),
            "token_type_ids": np.asarray(f["segment_ids"], np.int32), "labels": labels,
            "next_sentence_label": np.asarray(f["next_sentence_labels"], np.int32).reshape(b)}


def open_dataset(path: str, **overrides) -> PretrainingDataset:
    """Open a dataset directory written by ``bertrio pretrain-data`` (memory-mapped, no framework)."""
    return PretrainingDataset(path, **overrides)


# ============================================================================================ batching order
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Row order of ``epoch``: ``default_rng([seed, epoch]).permutation(n)`` (or ``arange``), int64."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def epoch_batches(n: int, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  drop_last: bool = False) -> list[np.ndarray]:
    """The batches (each (B,) int64 row indices) of one epoch, in order; every loader walks this list."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    order = epoch_order(n, seed, epoch, shuffle)
    stop = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def worker_batches(batches: Sequence[np.ndarray], worker_id: int, num_workers: int) -> list[np.ndarray]:
    """Worker ``worker_id`` of ``num_workers`` takes batches worker_id, worker_id + num_workers, ...
    (round-robin, the order torch's DataLoader reads its workers in, so the stream is unchanged)."""
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id={worker_id} is outside [0, {num_workers})")
    return list(batches[worker_id::num_workers])
