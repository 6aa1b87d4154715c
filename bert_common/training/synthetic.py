"""A deterministic in-memory pretraining dataset for tests, parity runs and benchmarks (NumPy only).

It has the interface of ``bert_common.pretraining.open_dataset``'s datasets — ``len(ds)``,
``ds.manifest``, ``ds.batch(indices, epoch=0) -> batch contract`` — so the loop, the CLI tests and the
three backends' parity runs all consume exactly the same rows. Each example is a function of
(seed, example index) only: any batch order or device split sees identical rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE_INDEX = -100
FIRST_WORD_ID = 5  # ids 0..4: [PAD], [UNK], [CLS], [SEP], [MASK] in the tiny vocabularies used with this


class SyntheticPretrainingDataset:
    """``n`` MLM + NSP rows of length ``seq_len`` over ids ``[FIRST_WORD_ID, vocab_size)``.

    Row i: [CLS] a [SEP] b [SEP] then padding, with a row-dependent length in [seq_len/2, seq_len];
    15 % of the word positions (at least one) labelled with their original id and replaced by [MASK];
    ``next_sentence_label`` a coin flip. Arrays: input_ids / attention_mask / token_type_ids / labels
    (B, S) int32, next_sentence_label (B,) int32.
    """

    def __init__(self, vocab_size: int, n: int = 64, seq_len: int = 16, seed: int = 0, mask_rate: float = 0.15):
        if vocab_size <= FIRST_WORD_ID + 1:
            raise ValueError(f"vocab_size must be > {FIRST_WORD_ID + 1}, got {vocab_size}")
        if seq_len < 6:
            raise ValueError(f"seq_len must be >= 6, got {seq_len}")
        self.vocab_size, self.n, self.seq_len, self.seed, self.mask_rate = vocab_size, n, seq_len, seed, mask_rate
        self.manifest = {"kind": "synthetic", "vocab_size": vocab_size, "vocab_hash": None,
                         "max_seq_length": seq_len, "num_instances": n}

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(f"example {i} out of range [0, {self.n})")
        rng = np.random.default_rng([self.seed, i])
        S = self.seq_len
        length = int(rng.integers(S // 2, S + 1))
        words = rng.integers(FIRST_WORD_ID, self.vocab_size, size=length - 3)
        cut = int(rng.integers(1, len(words))) if len(words) > 1 else len(words)
        ids = np.concatenate([[2], words[:cut], [3], words[cut:], [3]]).astype(np.int32)
        types = np.concatenate([np.zeros(cut + 2), np.ones(len(words) - cut + 1)]).astype(np.int32)
        word_pos = np.array([p for p in range(length) if ids[p] > 3])
        k = max(1, int(round(self.mask_rate * len(word_pos))))
        chosen = np.sort(rng.choice(word_pos, size=k, replace=False))
        labels = np.full(S, IGNORE_INDEX, np.int32)
        labels[chosen] = ids[chosen]
        ids = ids.copy()
        ids[chosen] = 4
        pad = S - length
        return {"input_ids": np.pad(ids, (0, pad)), "attention_mask": np.pad(np.ones(length, np.int32), (0, pad)),
                "token_type_ids": np.pad(types, (0, pad)), "labels": labels,
                "next_sentence_label": np.int32(rng.integers(0, 2))}

    def batch(self, indices: Sequence[int], epoch: int = 0) -> dict[str, np.ndarray]:
        """Rows ``indices`` stacked into the batch contract (the epoch does not change static rows)."""
        rows = [self.example(int(i)) for i in indices]
        return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in rows[0]}


__all__ = ["SyntheticPretrainingDataset"]
