"""Dynamic masking (RoBERTa-style: masks drawn when a batch is made), deterministic everywhere.

Every random decision about example ``index`` in ``epoch`` comes from its own generator
``example_rng(seed, epoch, index)`` = ``np.random.default_rng([seed, epoch, index])`` — never from a
generator shared by a batch, a worker or a framework — so the masks depend on (seed, epoch, index) only:
not on batch size, batch order, worker count, or whether torch, TensorFlow or JAX consumes them.

Per example, a fixed number of draws is taken whatever the outcome (one uniform per maskable unit, one
uniform and one random id per position), so one decision never shifts the draws of another.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

IGNORE_INDEX = -100   # label of an unmasked position (Hugging Face / PyTorch cross-entropy convention)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of example ``index`` in ``epoch``: all of its masking / pairing draws come from it."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """Rates of the masker. A unit (word piece, or word with ``whole_word``) is selected with probability
    ``mlm_probability``; each selected position becomes ``[MASK]`` with probability ``mask_token_rate``,
    a uniformly random id in [0, vocab_size) with ``random_token_rate``, and is kept otherwise (the
    80/10/10 rule by default). ``whole_word``: "wordpiece" groups a ``##`` piece with the word before it,
    "word_ids" groups positions with equal word ids (passed per batch), None masks word pieces alone."""

    mlm_probability: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    whole_word: str | None = None

    def __post_init__(self):
        for name in ("mlm_probability", "mask_token_rate", "random_token_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v!r} is out of range; it must be a probability in [0, 1]")
        if self.mask_token_rate + self.random_token_rate > 1.0 + 1e-12:
            raise ValueError(f"mask_token_rate + random_token_rate = {self.mask_token_rate + self.random_token_rate} "
                             f"exceeds 1")
        if self.whole_word not in (None, "wordpiece", "word_ids"):
            raise ValueError(f"whole_word={self.whole_word!r} must be None, 'wordpiece' or 'word_ids'")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class DynamicMasker:
    """Masks rows of ids for the MLM objective.

    ``vocab_size``: V; ``mask_id``: the [MASK] id; ``special_ids``: ids never masked (the special
    tokens); padding is never masked (positions where ``attention_mask`` is 0, or ``pad_id``);
    ``is_continuation``: (V,) bool, True for ``##`` pieces (needed by ``whole_word="wordpiece"``).
    """

    def __init__(self, vocab_size: int, mask_id: int, special_ids: Sequence[int], config: MaskingConfig | None = None,
                 is_continuation: np.ndarray | None = None, pad_id: int = 0):
        self.config = config or MaskingConfig()
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size!r} must be a positive int")
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
        if self.config.whole_word == "wordpiece":
            if is_continuation is None or len(is_continuation) != vocab_size:
                raise ValueError("whole_word='wordpiece' needs is_continuation, a (vocab_size,) bool array "
                                 "marking the '##' pieces")
        self.vocab_size, self.mask_id, self.pad_id = int(vocab_size), int(mask_id), int(pad_id)
        self._special = np.zeros(vocab_size, dtype=bool)
        self._special[np.asarray(list(special_ids) + [pad_id], dtype=np.int64)] = True
        self.is_continuation = None if is_continuation is None else np.asarray(is_continuation, dtype=bool)

    def mask_row(self, ids: np.ndarray, rng: np.random.Generator, attention_mask: np.ndarray | None = None,
                 word_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One row: ``ids`` (S,) int -> (masked ids (S,) int32, labels (S,) int32: the original id where a
        position was selected, -100 elsewhere). ``word_ids`` (S,) int, negative for no word, with
        ``whole_word="word_ids"``. Draws: ``rng.random(U)`` (U units), ``rng.random(S)``,
        ``rng.integers(0, V, S)``, always, in that order."""
        cfg = self.config
        ids = np.asarray(ids)
        s = ids.shape[0]
        maskable = ~self._special[ids]
        if attention_mask is not None:
            maskable &= np.asarray(attention_mask) != 0
        # unit of each position: itself, or the word it belongs to
        if cfg.whole_word == "wordpiece":
            starts = maskable & ~self.is_continuation[ids]
            # a continuation piece right after a non-maskable position starts its own unit
            starts |= maskable & ~np.concatenate([[False], maskable[:-1]])
            unit = np.cumsum(starts) - 1
        elif cfg.whole_word == "word_ids":
            if word_ids is None:
                raise ValueError("whole_word='word_ids' needs word_ids for every row")
            w = np.asarray(word_ids)
            if w.shape != ids.shape:
                raise ValueError(f"word_ids has shape {w.shape}, expected {ids.shape}")
            maskable &= w >= 0
            prev = np.concatenate([[-1], w[:-1]])
            prev_maskable = np.concatenate([[False], maskable[:-1]])
            starts = maskable & ~((w == prev) & prev_maskable)
            unit = np.cumsum(starts) - 1
        else:
            unit = np.cumsum(maskable) - 1
        n_units = int(unit[-1]) + 1 if s else 0
        selected_unit = rng.random(n_units) < cfg.mlm_probability
        u = rng.random(s)
        rand = rng.integers(0, self.vocab_size, s)
        selected = maskable & selected_unit[np.clip(unit, 0, max(n_units - 1, 0))] if n_units else np.zeros(s, bool)
        labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int32)
        out = ids.astype(np.int32, copy=True)
        to_mask = selected & (u < cfg.mask_token_rate)
        to_rand = selected & (u >= cfg.mask_token_rate) & (u < cfg.mask_token_rate + cfg.random_token_rate)
        out[to_mask] = self.mask_id
        out[to_rand] = rand[to_rand]
        return out, labels

    def mask_batch(self, input_ids: np.ndarray, indices: Sequence[int], seed: int, epoch: int = 0,
                   attention_mask: np.ndarray | None = None, word_ids: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) ids of examples ``indices`` (B,) -> (masked ids, labels), both (B, S) int32; row b uses
        ``example_rng(seed, epoch, indices[b])`` only."""
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or len(indices) != input_ids.shape[0]:
            raise ValueError(f"input_ids must be (B, S) with B = len(indices) = {len(indices)}, got {input_ids.shape}")
        out = np.empty(input_ids.shape, np.int32)
        labels = np.empty(input_ids.shape, np.int32)
        for b, index in enumerate(indices):
            out[b], labels[b] = self.mask_row(
                input_ids[b], example_rng(seed, epoch, index),
                None if attention_mask is None else attention_mask[b], None if word_ids is None else word_ids[b])
        return out, labels
