"""Unpadded ("varlen") execution, shared by the three backends: which tokens form a sequence, and the
host-side plan that lets the dense layers run on real tokens only.

With ``config.attn_implementation = "varlen"`` a row of ``input_ids`` may hold several sequences, and
padding costs nothing in the dense layers. Two conventions say where sequences are, and both apply at once:

* **padded batches** — ``attention_mask`` (B, S) 0/1: dropped tokens (0) belong to no sequence;
* **packed rows** — Hugging Face's ``DataCollatorWithFlattening`` convention: ``position_ids`` (B, S)
  restart at 0 where a new sequence begins (use :func:`pack` or :func:`position_ids_from_cu_seqlens` to
  make them from token lists or ``cu_seqlens`` offsets).

The rule: a sequence starts at the first kept token of a row and at every kept token whose position id is
0; it runs to the next start or the end of the row. Token *i* attends to token *j* iff both are kept, they
are in the same row and the same sequence, and (decoders only) column(*j*) ≤ column(*i*). Relative
position scores use column differences, which inside a sequence are position differences. On kept tokens
this equals the padded computation of each sequence on its own; outputs at dropped tokens are 0.

Two executions of that rule, picked by :func:`bert_common.semantics.varlen_mode`:

========  =====================================================================================================
unpad     inputs are concrete: :func:`make_plan` lists the T kept tokens; embeddings, every dense layer,
          LayerNorm and activation run on (1, T, H); attention gathers each sequence into a block of a
          (G, L) layout, attends within blocks, and scatters back; the result is scattered to (B, S, H).
segments  inputs are traced (a user's ``jax.jit``, ``tf.function``) or attention probabilities are
          requested: the padded layout is kept and the rule becomes an additive (B, 1, S, S) mask built
          in-graph from :func:`segment_ids` (same numbers on kept tokens, no saving).
========  =====================================================================================================

Bucketing: jitted backends (Flax, TF XLA) compile once per plan shape, so :func:`make_plan` can round T,
L and G up to multiples. The extra ("dummy") tokens are id 0 at column 0.., attend only among
themselves in blocks of their own, and are scattered to a discarded row, so they change nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Plan", "make_plan", "geometric_multiple", "segment_ids", "block_allowed", "block_relative_index", "pack",
           "position_ids_from_cu_seqlens", "cu_seqlens_from_position_ids", "round_up"]


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= n (n itself when ``multiple`` <= 1)."""
    return n if multiple <= 1 else -(-n // multiple) * multiple


def geometric_multiple(n: int, floor: int, steps: int) -> int:
    """The multiple a size ``n`` is rounded up to when bucketing geometrically: max(floor,
    2**floor(log2 n) / steps). Each doubling of n then brings at most ``steps`` distinct rounded sizes, and
    rounding wastes less than 1/steps of n."""
    return max(floor, (1 << (max(int(n), 1).bit_length() - 1)) // steps)


def _starts(kept: np.ndarray, position_ids: np.ndarray | None) -> np.ndarray:
    """(B, S) bool: kept tokens that begin a sequence (first kept token of a row, or position id 0)."""
    first = kept & (np.cumsum(kept, axis=-1) == 1)
    if position_ids is None:
        return first
    return first | (kept & (np.asarray(position_ids) == 0))


def segment_ids(attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
                shape: tuple[int, int]) -> np.ndarray:
    """(B, S) int32: 0 for dropped tokens, else 1, 2, ... numbering the sequences of each row.

    The NumPy statement of the module's rule; each backend writes the same three lines in its own ops for
    the in-graph ``segments`` execution, and tests compare them with this one.
    """
    kept = np.ones(shape, bool) if attention_mask is None else np.asarray(attention_mask) != 0
    if position_ids is not None:
        position_ids = np.broadcast_to(np.asarray(position_ids), shape)
    return (np.cumsum(_starts(kept, position_ids), axis=-1) * kept).astype(np.int32)


@dataclass(frozen=True)
class Plan:
    """Where the T packed tokens come from and how attention groups them (all NumPy, host side).

    ``T`` counts dummy tokens (bucketing); ``num_tokens`` <= T are real. Blocks: G rows of L slots.

    Fields:
        batch, seq:   B, S of the padded layout the output is scattered back to.
        token_index:  (T,) int64, ``b * S + s`` of each packed token in row-major order; dummies -> ``B * S``
                      (one extra, discarded row).
        columns:      (T,) int32, the column ``s`` of each token (a dummy's index in its dummy block).
        gather:       (G, L) int32, the packed token in each block slot (0 where the slot is empty).
        valid:        (G, L) bool, the slot holds a token.
        slot:         (T,) int32, ``g * L + l``: where each packed token sits in the blocks.
        cu_seqlens:   (num_sequences + 1,) int32 offsets of the real sequences in the packed order.
        num_tokens:   real tokens; ``num_sequences``: real sequences.
    """
    batch: int
    seq: int
    token_index: np.ndarray
    columns: np.ndarray
    gather: np.ndarray
    valid: np.ndarray
    slot: np.ndarray
    cu_seqlens: np.ndarray
    num_tokens: int
    num_sequences: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, G, L): what a jitted backend compiles for."""
        return (len(self.token_index),) + tuple(self.gather.shape)

    @property
    def block_columns(self) -> np.ndarray:
        """(G, L) int32: the column of each slot's token (0 for empty slots)."""
        return np.where(self.valid, self.columns[self.gather], 0).astype(np.int32)

    def take(self, x: np.ndarray, fill: int = 0) -> np.ndarray:
        """(B, S, ...) host array -> (T, ...) packed: the values at the kept tokens; dummies get ``fill``."""
        x = np.asarray(x)
        flat = x.reshape((self.batch * self.seq,) + x.shape[2:])
        pad = np.full((1,) + x.shape[2:], fill, x.dtype)
        return np.concatenate([flat, pad])[self.token_index]

    def scatter(self, packed: np.ndarray) -> np.ndarray:
        """(T, ...) host array -> (B, S, ...) with 0 at dropped positions (the inverse of :meth:`take`)."""
        packed = np.asarray(packed)
        out = np.zeros((self.batch * self.seq + 1,) + packed.shape[1:], packed.dtype)
        out[self.token_index] = packed
        return out[:-1].reshape((self.batch, self.seq) + packed.shape[1:])


def make_plan(attention_mask: np.ndarray | None, position_ids: np.ndarray | None, shape: tuple[int, int], *,
              token_multiple: int = 1, length_multiple: int = 1, block_multiple: int = 1,
              buckets: Mapping[str, tuple[int, int]] | None = None) -> Plan:
    """The plan of a (B, S) batch: concrete ``attention_mask`` (B, S) 0/1 or None (all kept) and
    ``position_ids`` (B, S) / (1, S) or None (then every row is one sequence).

    ``token_multiple``, ``length_multiple``, ``block_multiple`` round T, L and G up (dummy tokens fill
    the difference) so that a jitted backend sees few distinct shapes; 1 = exact sizes (eager backends).
    ``buckets`` ({"token" | "length" | "block": (floor, steps)}) instead derives each multiple from the
    exact size with :func:`geometric_multiple`.
    """
    B, S = (int(d) for d in shape)
    kept = np.ones((B, S), bool) if attention_mask is None else np.asarray(attention_mask).reshape(B, S) != 0
    pos = None if position_ids is None else np.broadcast_to(np.asarray(position_ids), (B, S))
    token_index = np.flatnonzero(kept.ravel())                                        # T0, row-major
    starts = _starts(kept, pos).ravel()[token_index]                                   # T0 bool
    T0 = len(token_index)
    begin = np.flatnonzero(starts)                                                     # G0 sequence starts
    cu = np.append(begin, T0).astype(np.int32)
    lengths = np.diff(cu)
    G0 = len(lengths)
    if buckets:
        exact = {"token": max(T0, 1), "length": int(lengths.max()) if G0 else 1, "block": G0}
        token_multiple, length_multiple, block_multiple = (
            geometric_multiple(exact[k], *buckets[k]) if k in buckets else 1 for k in ("token", "length", "block"))
    L = round_up(max(int(lengths.max()) if G0 else 1, 1), length_multiple)
    T = round_up(max(T0, 1), token_multiple)
    dummies = T - T0
    dummy_blocks = -(-dummies // L)
    G = round_up(G0 + dummy_blocks, block_multiple)

    seq_of_token = np.repeat(np.arange(G0), lengths)                                   # T0
    pos_in_seq = np.arange(T0) - cu[:-1][seq_of_token] if T0 else np.zeros(0, np.int64)
    # Dummy tokens fill blocks G0, G0 + 1, ... in order, L to a block.
    d = np.arange(dummies)
    block = np.concatenate([seq_of_token, G0 + d // L]).astype(np.int64)
    lane = np.concatenate([pos_in_seq, d % L]).astype(np.int64)
    slot = block * L + lane
    gather = np.zeros(G * L, np.int32)
    valid = np.zeros(G * L, bool)
    gather[slot] = np.arange(T)
    valid[slot] = True
    columns = np.concatenate([token_index % S, d % L]).astype(np.int32) if S else np.zeros(T, np.int32)
    return Plan(batch=B, seq=S,
                token_index=np.concatenate([token_index, np.full(dummies, B * S)]).astype(np.int64),
                columns=columns, gather=gather.reshape(G, L), valid=valid.reshape(G, L),
                slot=slot.astype(np.int32), cu_seqlens=cu, num_tokens=T0, num_sequences=G0)


def block_allowed(plan: Plan, causal: bool) -> np.ndarray:
    """Bool attention pattern of the blocks: (G, 1, L) (key slot holds a token) or, for decoders,
    (G, L, L) [g, query slot, key slot] with the causal rule on columns. Backends turn it into their
    additive mask (0 kept, ``finfo(mask dtype).min`` dropped)."""
    keys = plan.valid[:, None, :]                                                      # G,1,L
    if not causal:
        return keys
    cols = plan.block_columns
    return keys & (cols[:, None, :] <= cols[:, :, None])                               # G,L,L


def block_relative_index(plan: Plan, max_positions: int, shared: bool = False) -> np.ndarray:
    """(G, L, L) int32 index into ``distance_embedding`` for relative position types: query column − key
    column + max_positions − 1 (``semantics.relative_distance_index`` on each block), clipped into
    [0, 2 * max_positions − 2] so that empty and dummy slots index a real row.

    ``shared=True`` returns one (L, L) lane-difference index instead when it equals every block's on
    its real token pairs (each sequence on consecutive columns, the usual case): G times less memory
    and gather work. Pairs with an empty slot are masked or discarded either way."""
    cols = plan.block_columns.astype(np.int64)
    lanes = np.arange(cols.shape[1])
    if shared and np.all(~plan.valid | (cols - cols[:, :1] == lanes)):
        index = lanes[:, None] - lanes[None, :] + (max_positions - 1)
        return np.clip(index, 0, 2 * max_positions - 2).astype(np.int32)
    index = cols[:, :, None] - cols[:, None, :] + (max_positions - 1)
    return np.clip(index, 0, 2 * max_positions - 2).astype(np.int32)


# ------------------------------------------------------------------------------------------ packing helpers
def position_ids_from_cu_seqlens(cu_seqlens: Sequence[int], total: int | None = None) -> np.ndarray:
    """``cu_seqlens`` (N + 1,) offsets (0, len0, len0 + len1, ...) -> (1, T) int64 position ids restarting
    at 0 at each offset (the packed-row convention the models read). ``total`` (default ``cu_seqlens[-1]``)
    may be larger: the tail continues the last sequence's count (pad it with ``attention_mask`` 0)."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    if cu.ndim != 1 or len(cu) < 2 or cu[0] != 0 or np.any(np.diff(cu) <= 0):
        raise ValueError(f"cu_seqlens must be strictly increasing offsets starting at 0, got {cu.tolist()}")
    total = int(cu[-1]) if total is None else int(total)
    if total < cu[-1]:
        raise ValueError(f"total={total} is smaller than cu_seqlens[-1]={int(cu[-1])}")
    t = np.arange(total)
    begin = cu[np.searchsorted(cu, t, side="right") - 1].clip(max=cu[-2])
    return (t - begin)[None, :]


def cu_seqlens_from_position_ids(position_ids: np.ndarray, attention_mask: np.ndarray | None = None
                                 ) -> np.ndarray:
    """(B, S) position ids (restarts at 0) [+ mask] -> (N + 1,) int32 offsets of the sequences in the
    row-major order of the kept tokens (what ``make_plan(...).cu_seqlens`` holds)."""
    pos = np.asarray(position_ids)
    pos = pos.reshape(1, -1) if pos.ndim == 1 else pos
    return make_plan(attention_mask, pos, pos.shape).cu_seqlens


def pack(sequences: Sequence[Sequence[int]], *, token_type_ids: Sequence[Sequence[int]] | None = None,
         row_tokens: int | None = None, pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Token lists -> packed rows, Hugging Face ``DataCollatorWithFlattening`` style.

    Sequences are laid end to end in order; with ``row_tokens`` they are cut into rows of at most that many
    tokens (a sequence never straddles two rows; one longer than ``row_tokens`` is an error naming it) and
    the rows are padded with ``pad_token_id`` / mask 0. Returns int64 arrays ``input_ids``,
    ``position_ids``, ``attention_mask``, ``token_type_ids`` of shape (R, W) (R = 1 without
    ``row_tokens``), and ``sequence_rows`` (N,) / ``sequence_starts`` (N,): where each sequence landed.
    """
    lengths = [len(s) for s in sequences]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"sequences[{i}] is empty; every packed sequence needs at least one token")
        if row_tokens is not None and n > row_tokens:
            raise ValueError(f"sequences[{i}] has {n} tokens, more than row_tokens={row_tokens}")
    if token_type_ids is not None and [len(t) for t in token_type_ids] != lengths:
        raise ValueError("token_type_ids must have one list per sequence, each as long as its sequence")
    width = row_tokens if row_tokens is not None else max(1, sum(lengths))
    rows: list[list[int]] = [[]]
    where_row, where_start = [], []
    for n in lengths:
        if len(rows[-1]) + n > width:
            rows.append([])
        where_row.append(len(rows) - 1)
        where_start.append(len(rows[-1]))
        rows[-1].extend(range(n))
    R = len(rows)
    out = {k: np.zeros((R, width), np.int64) for k in ("input_ids", "position_ids", "attention_mask",
                                                       "token_type_ids")}
    out["input_ids"][:] = pad_token_id
    for i, seq in enumerate(sequences):
        r, a = where_row[i], where_start[i]
        n = lengths[i]
        out["input_ids"][r, a:a + n] = seq
        out["position_ids"][r, a:a + n] = np.arange(n)
        out["attention_mask"][r, a:a + n] = 1
        if token_type_ids is not None:
            out["token_type_ids"][r, a:a + n] = token_type_ids[i]
    out["sequence_rows"] = np.asarray(where_row, np.int64)
    out["sequence_starts"] = np.asarray(where_start, np.int64)
    return out
