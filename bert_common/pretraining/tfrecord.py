"""TFRecord files of ``tf.train.Example`` protos, written in NumPy (no TensorFlow, no protobuf).

Google's ``run_pretraining.py`` reads what this writes unchanged: one Example per instance, with the
features ``input_ids``, ``input_mask``, ``segment_ids``, ``masked_lm_positions``, ``masked_lm_ids``,
``next_sentence_labels`` (int64 lists) and ``masked_lm_weights`` (float list).

Encoding facts (protocol buffers wire format, tensorflow/core/example/{example,feature}.proto):
``Example.features`` = field 1; ``Features.feature`` = field 1, a map whose entries are messages
``{key: 1 (string), value: 2 (Feature)}``; ``Feature`` = oneof ``bytes_list`` 1 / ``float_list`` 2 /
``int64_list`` 3; ``FloatList.value`` / ``Int64List.value`` = field 1, packed (little-endian float32 /
varints). Map entries are written sorted by key — protobuf's deterministic serialisation. (Google's
script serialises without it, and protobuf's ``upb`` runtime, the one TensorFlow 2.x ships, then orders
map entries by a hash table seeded per process, so Google's own output differs from run to run in the
order of the seven entries and nowhere else; every reader parses both the same. Our records equal
Google's records re-serialised with ``SerializeToString(deterministic=True)``, byte for byte.)

TFRecord framing: ``uint64 length``, ``uint32 masked_crc32c(length bytes)``, ``data``,
``uint32 masked_crc32c(data)``, little-endian; ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8``
(mod 2**32), with CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
"""
from __future__ import annotations

from typing import BinaryIO, Mapping

import numpy as np

# Deterministic serialisation: map entries sorted by key.
SERIALIZED_ORDER = ("input_ids", "input_mask", "masked_lm_ids", "masked_lm_positions", "masked_lm_weights",
                    "next_sentence_labels", "segment_ids")
FLOAT_FEATURES = frozenset({"masked_lm_weights"})
_CRC_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_CRC_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_table()


def crc32c_many(buffers: list[bytes]) -> np.ndarray:
    """CRC-32C of each buffer, (n,) uint32. Vectorised across buffers: one byte column at a time for all
    of them. Buffers are sorted longest first and right-aligned in a (width, n) byte matrix, so the
    buffers that have started by column c are a prefix of the columns and each step is a contiguous
    slice."""
    n = len(buffers)
    if not n:
        return np.zeros(0, np.uint32)
    lengths = np.fromiter((len(b) for b in buffers), np.int64, n)
    order = np.argsort(-lengths, kind="stable")
    lens = lengths[order]
    width = int(lens[0])
    mat = np.zeros((n, width), np.uint8)
    flat = np.frombuffer(b"".join(buffers[i] for i in order.tolist()), np.uint8)
    offsets = np.cumsum(lens) - lens
    # byte j of sorted buffer r goes to column width - len_r + j
    rows = np.repeat(np.arange(n), lens)
    cols = np.arange(len(flat)) - np.repeat(offsets - (width - lens), lens)
    mat[rows, cols] = flat
    mat = np.ascontiguousarray(mat.T)                   # (width, n): column c is contiguous
    active = np.searchsorted(width - lens, np.arange(width), side="right")  # buffers started by column c
    state = np.full(n, 0xFFFFFFFF, np.uint32)
    table = _TABLE
    for c in range(width):
        k = int(active[c])
        s = state[:k]
        state[:k] = table[(s ^ mat[c, :k]) & 0xFF] ^ (s >> 8)
    out = np.empty(n, np.uint32)
    out[order] = state ^ np.uint32(0xFFFFFFFF)
    return out


def masked_crc(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF).astype(np.uint32)


def _varint_bytes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of the non-negative ints in ``a`` (N, K): (flat uint8 bytes, row-major; per-row byte
    counts (N,))."""
    v = np.asarray(a).astype(np.uint64)
    if v.size and int(np.asarray(a).min()) < 0:
        raise ValueError("negative ids cannot be written as Google's int64 features here")
    top = int(v.max()) if v.size else 0
    width = max(1, -(-top.bit_length() // 7))          # bytes of the largest value
    nb = np.ones(v.shape, np.int64)
    for k in range(1, width):
        nb += v >= np.uint64(1 << (7 * k))
    out = np.empty(v.shape + (width,), np.uint8)
    for k in range(width):
        out[..., k] = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | ((nb > k + 1).astype(np.uint8) << 7)
    if width == 1:
        return out.reshape(-1), np.full(v.shape[0], v.shape[1] if v.ndim > 1 else 1, np.int64)
    keep = np.arange(width) < nb[..., None]
    return out[keep], nb.reshape(nb.shape[0], -1).sum(axis=1)


def _varint_uncached(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_SMALL_VARINTS = [_varint_uncached(i) for i in range(1 << 14)]


def _varint(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else _varint_uncached(n)


def _split(flat: np.ndarray, counts: np.ndarray) -> list[bytes]:
    raw = flat.tobytes()
    ends = np.cumsum(counts)
    starts = ends - counts
    return [raw[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


def encode_examples(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serialised ``tf.train.Example`` of each row of Google's features ((N, K) arrays; N-vector for
    ``next_sentence_labels``), identical to ``SerializeToString(deterministic=True)`` of Google's."""
    n = len(features["input_ids"])
    parts: dict[str, list[bytes]] = {}
    for name in SERIALIZED_ORDER:
        a = np.asarray(features[name]).reshape(n, -1)
        if name in FLOAT_FEATURES:
            payloads = [r.tobytes() for r in np.ascontiguousarray(a, dtype="<f4")]
            tag = b"\x12"
        else:
            flat, counts = _varint_bytes(a)
            payloads = _split(flat, counts)
            tag = b"\x1a"
        key = b"\x0a" + _varint(len(name)) + name.encode()
        entries = []
        for p in payloads:
            lst = b"\x0a" + _varint(len(p)) + p                # (Float|Int64)List.value, packed
            feat = tag + _varint(len(lst)) + lst               # Feature.{float,int64}_list
            entry = key + b"\x12" + _varint(len(feat)) + feat  # map entry {key, value}
            entries.append(b"\x0a" + _varint(len(entry)) + entry)  # Features.feature
        parts[name] = entries
    out = []
    for r in range(n):
        body = b"".join(parts[name][r] for name in SERIALIZED_ORDER)
        out.append(b"\x0a" + _varint(len(body)) + body)        # Example.features
    return out


def write_records(f: BinaryIO, records: list[bytes]) -> int:
    """Append TFRecord-framed ``records`` to the open binary file ``f``; returns bytes written."""
    if not records:
        return 0
    lengths = np.fromiter((len(r) for r in records), np.uint64, len(records))
    len_bytes = [int(x).to_bytes(8, "little") for x in lengths.tolist()]
    len_crc = masked_crc(crc32c_many(len_bytes))
    data_crc = masked_crc(crc32c_many(records))
    total = 0
    chunks = []
    for lb, lc, rec, dc in zip(len_bytes, len_crc.tolist(), records, data_crc.tolist()):
        chunks.append(lb + lc.to_bytes(4, "little") + rec + dc.to_bytes(4, "little"))
        total += 16 + len(rec)
    f.write(b"".join(chunks))
    return total


def write_tfrecord_examples(f: BinaryIO, features: Mapping[str, np.ndarray], chunk: int = 4096) -> int:
    """Google's features (N rows) -> TFRecord Examples appended to ``f``, in row order; bytes written."""
    n = len(features["input_ids"])
    total = 0
    for lo in range(0, n, chunk):
        part = {k: np.asarray(v)[lo:lo + chunk] for k, v in features.items()}
        total += write_records(f, encode_examples(part))
    return total


def read_tfrecord(path: str) -> list[bytes]:
    """The records of a TFRecord file, checksums verified (ValueError naming the file and record)."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos, i = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos} (record {i})")
        lb = data[pos:pos + 8]
        n = int.from_bytes(lb, "little")
        if int.from_bytes(data[pos + 8:pos + 12], "little") != int(masked_crc(crc32c_many([lb]))[0]):
            raise ValueError(f"{path}: record {i} has a bad length checksum")
        rec = data[pos + 12:pos + 12 + n]
        if len(rec) != n or pos + 16 + n > len(data):
            raise ValueError(f"{path}: record {i} is truncated")
        if int.from_bytes(data[pos + 12 + n:pos + 16 + n], "little") != int(masked_crc(crc32c_many([rec]))[0]):
            raise ValueError(f"{path}: record {i} has a bad data checksum")
        out.append(rec)
        pos += 16 + n
        i += 1
    return out
