"""Packed rows: several sequences per row, for the unpadded (variable-length) model path.

Convention of Hugging Face's ``DataCollatorWithFlattening`` (transformers 4.57): ``position_ids``
restart at 0 at the start of every sequence, and the sequence boundaries are given as cumulative lengths
``cu_seq_lens_q`` / ``cu_seq_lens_k`` (int32, (n + 1,), starting at 0) over the real (non-padding)
tokens taken in row-major order, with ``max_length_q`` / ``max_length_k`` the longest sequence. With
``flatten=True`` the output is exactly that collator's layout: one row (1, T) of all tokens, no padding.
Otherwise sequences are packed in order, next-fit, into rows of ``max_seq_length`` (R, S) with padding at
each row's end (``attention_mask`` 0 there); the boundaries then index the tokens an unpadding step
gathers with ``attention_mask`` (row-major), so ``cu_seq_lens`` describe both layouts.

Per sequence (n = B input rows): ``next_sentence_label`` (n,) int32 and ``sequence_starts`` (n, 2) int32,
the (row, column) of each sequence's first token ([CLS], where the NSP head reads).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from bert_common.pretraining.masking import IGNORE_INDEX

_TOKEN_KEYS = ("input_ids", "token_type_ids", "labels")
_PAD = {"input_ids": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}


def pack_batch(batch: Mapping[str, np.ndarray], max_seq_length: int | None = None, flatten: bool = False
               ) -> dict[str, np.ndarray]:
    """Pack the rows of a batch-contract dict (``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``labels`` (B, S); ``next_sentence_label`` (B,)) — see the module docstring. Row lengths come from
    ``attention_mask`` (right padding). Returns ``input_ids`` / ``token_type_ids`` / ``labels`` /
    ``attention_mask`` / ``position_ids`` (R, S) int32, ``cu_seq_lens_q`` = ``cu_seq_lens_k`` (n + 1,)
    int32, ``max_length_q`` = ``max_length_k`` (int), ``next_sentence_label`` (n,) int32,
    ``sequence_starts`` (n, 2) int32."""
    mask = np.asarray(batch["attention_mask"])
    b, s = mask.shape
    lengths = mask.sum(axis=1).astype(np.int64)
    if np.any(mask != (np.arange(s) < lengths[:, None])):
        raise ValueError("attention_mask must be right-padded (ones then zeros) in every row to pack it")
    width = int(lengths.sum()) if flatten else int(max_seq_length or s)
    if width < 1 or (not flatten and lengths.size and lengths.max() > width):
        raise ValueError(f"max_seq_length={max_seq_length} is shorter than the longest sequence ({int(lengths.max())})")
    # next-fit: row of each sequence and its start column
    row = np.zeros(b, np.int64)
    col = np.zeros(b, np.int64)
    r, fill = 0, 0
    for i, n in enumerate(lengths.tolist()):
        if fill + n > width:
            r, fill = r + 1, 0
        row[i], col[i] = r, fill
        fill += n
    rows = r + 1 if b else 0
    out = {k: np.full((rows, width), _PAD[k], np.int32) for k in _TOKEN_KEYS}
    out["attention_mask"] = np.zeros((rows, width), np.int32)
    out["position_ids"] = np.zeros((rows, width), np.int32)
    for i, n in enumerate(lengths.tolist()):
        sl = (row[i], slice(col[i], col[i] + n))
        for k in _TOKEN_KEYS:
            out[k][sl] = np.asarray(batch[k])[i, :n]
        out["attention_mask"][sl] = 1
        out["position_ids"][sl] = np.arange(n)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    longest = int(lengths.max()) if b else 0
    out.update({"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.copy(), "max_length_q": longest, "max_length_k": longest,
                "next_sentence_label": np.asarray(batch["next_sentence_label"], np.int32).reshape(b),
                "sequence_starts": np.stack([row, col], axis=1).astype(np.int32)})
    return out
