"""Token generation shared by every backend: the decoding loop and sampling live here, in NumPy.

A backend supplies ``step(input_ids, attention_mask, past) -> (next_token_logits, past)`` running its
own cached forward; this module decides the tokens. Because sampling uses one NumPy generator, the same
seed gives the same tokens in every backend whenever the logits agree.

Shapes: ``input_ids`` (B, S) int64, ``attention_mask`` (B, S) int64, logits (B, V) float32.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

StepFn = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


def filter_logits(logits: np.ndarray, top_k: int | None = None, top_p: float | None = None,
                  temperature: float = 1.0) -> np.ndarray:
    """Scale by temperature, then keep the top-k and the smallest nucleus with mass >= top_p; others -inf.

    (B, V) float -> (B, V) float64.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = logits.astype(np.float64) / temperature
    if top_k is not None and top_k > 0 and top_k < x.shape[-1]:
        kth = np.sort(x, axis=-1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and top_p < 1.0:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, axis=-1)
        p = np.exp(sorted_x - sorted_x[:, :1])
        p /= p.sum(-1, keepdims=True)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (np.cumsum(p, axis=-1) - p) >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    return x


def generate(step: StepFn, input_ids, attention_mask=None, *, max_new_tokens: int = 20, do_sample: bool = False,
             top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0, seed: int = 0,
             eos_token_id: int | None = None, pad_token_id: int = 0) -> np.ndarray:
    """Greedy or sampled continuation using the cache. Returns (B, S + n) int64, n <= max_new_tokens.

    A row that emitted ``eos_token_id`` is padded with ``pad_token_id`` afterwards; the loop stops early
    when every row has finished.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    rng = np.random.default_rng(seed)
    done = np.zeros(ids.shape[0], bool)
    past = None
    feed = ids
    for _ in range(max_new_tokens):
        logits, past = step(feed, mask, past)
        logits = np.asarray(logits, dtype=np.float32)
        if do_sample:
            x = filter_logits(logits, top_k, top_p, temperature)
            p = np.exp(x - x.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            nxt = np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)
        else:
            nxt = logits.argmax(-1).astype(np.int64)
        nxt = np.where(done, pad_token_id, nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(nxt[:, None])], axis=1)
        if eos_token_id is not None:
            done |= nxt == eos_token_id
            if done.all():
                break
        feed = nxt[:, None]
    return ids
