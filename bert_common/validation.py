"""Input validation shared by every backend: the limits as data, the messages in one place.

Each backend checks concrete inputs before any kernel runs; frameworks that trace (``tf.function``,
``jax.jit``) use ``input_limits`` and ``range_message`` to build the same error in-graph.
The error is always a ``ValueError`` naming the argument, the offending value and the limit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bert_common.config import BertConfig


def input_limits(config: BertConfig) -> dict[str, tuple[int, str]]:
    """``{argument: (exclusive upper bound, what sets it)}`` for integer inputs (lower bound is 0)."""
    return {
        "input_ids": (config.vocab_size, "config.vocab_size"),
        "token_type_ids": (config.type_vocab_size, "config.type_vocab_size"),
        "position_ids": (config.max_position_embeddings, "config.max_position_embeddings"),
    }


def range_message(arg: str, value: Any, limit: int, source: str) -> str:
    return f"{arg} contains {value}, outside the valid range [0, {limit}) set by {source}={limit}"


def length_message(arg: str, length: Any, past: Any, limit: int) -> str:
    return (f"{arg} has sequence length {length} (+ {past} cached) = more than "
            f"config.max_position_embeddings={limit}")


def shape_message(arg: str, shape: Any, expected: Any) -> str:
    return f"{arg} has shape {tuple(shape)} but must have shape {tuple(expected)} (batch, past + seq)"


def _first_bad(a: np.ndarray, limit: int):
    bad = (a < 0) | (a >= limit)
    if not bad.any():
        return None
    return a[bad].flat[0]


def check_inputs(config: BertConfig, *, input_ids=None, token_type_ids=None, position_ids=None,
                 attention_mask=None, inputs_embeds_shape=None, past_length: int = 0,
                 encoder_hidden_shape=None, encoder_attention_mask=None) -> None:
    """Validate concrete inputs (NumPy arrays or anything ``np.asarray`` accepts). Raises ValueError.

    Shapes: ids (B, S) or (B, C, S) for multiple choice; masks (B, past + S) likewise.
    """
    limits = input_limits(config)
    arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    if input_ids is not None and inputs_embeds_shape is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds_shape is None:
        raise ValueError("one of input_ids or inputs_embeds is required")
    base_shape = tuple(np.shape(input_ids)) if input_ids is not None else tuple(inputs_embeds_shape)[:-1]
    for arg, value in arrays.items():
        if value is None:
            continue
        a = np.asarray(value)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{arg} must hold integers, got dtype {a.dtype}")
        if arg != "position_ids" and tuple(a.shape) != base_shape:
            raise ValueError(shape_message(arg, a.shape, base_shape))
        limit, source = limits[arg]
        bad = _first_bad(a, limit)
        if bad is not None:
            raise ValueError(range_message(arg, int(bad), limit, source))
    seq = base_shape[-1] if base_shape else 0
    if seq + past_length > config.max_position_embeddings:
        raise ValueError(length_message("input_ids" if input_ids is not None else "inputs_embeds", seq,
                                        past_length, config.max_position_embeddings))
    if attention_mask is not None:
        expected = base_shape[:-1] + (past_length + seq,)
        if tuple(np.shape(attention_mask)) != expected:
            raise ValueError(shape_message("attention_mask", np.shape(attention_mask), expected))
    if encoder_attention_mask is not None and encoder_hidden_shape is not None:
        expected = tuple(encoder_hidden_shape)[:-1]
        if tuple(np.shape(encoder_attention_mask)) != expected:
            raise ValueError(f"encoder_attention_mask has shape {tuple(np.shape(encoder_attention_mask))} but "
                             f"encoder_hidden_states needs {expected} (batch, encoder seq)")
