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
                 encoder_hidden_shape=None, encoder_attention_mask=None, packed: bool = False) -> None:
    """Validate concrete inputs (NumPy arrays or anything ``np.asarray`` accepts). Raises ValueError.

    Shapes (after multiple choice is flattened): ids (B, S) integer, ``inputs_embeds`` (B, S, H), masks
    (B, past + S) holding only 0 and 1. A 1-D ``input_ids``, a zero-length sequence, a mask value other
    than 0/1 (NaN included) are refused like out-of-range ids: a ValueError naming the argument.
    ``packed=True`` (varlen rows of several sequences with explicit position ids) lifts the row-length limit.
    """
    limits = input_limits(config)
    arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    if input_ids is not None and inputs_embeds_shape is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds_shape is None:
        raise ValueError("one of input_ids or inputs_embeds is required")
    base_shape = tuple(np.shape(input_ids)) if input_ids is not None else tuple(inputs_embeds_shape)[:-1]
    if input_ids is not None and not np.issubdtype(np.asarray(input_ids).dtype, np.integer):
        raise ValueError(f"input_ids must hold integers, got dtype {np.asarray(input_ids).dtype}")
    check_rank(input_ids is not None, base_shape if input_ids is not None else inputs_embeds_shape)
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
    if seq == 0:
        raise ValueError(empty_message("input_ids" if input_ids is not None else "inputs_embeds", base_shape))
    # Packed rows (``semantics.packed_rows``) restart their positions per sequence: the limit then holds for
    # the position ids, which were range-checked above, not for the row.
    if not packed and seq + past_length > config.max_position_embeddings:
        raise ValueError(length_message("input_ids" if input_ids is not None else "inputs_embeds", seq,
                                        past_length, config.max_position_embeddings))
    if attention_mask is not None:
        expected = base_shape[:-1] + (past_length + seq,)
        if tuple(np.shape(attention_mask)) != expected:
            raise ValueError(shape_message("attention_mask", np.shape(attention_mask), expected))
        check_mask_values("attention_mask", attention_mask)
    if encoder_attention_mask is not None and encoder_hidden_shape is not None:
        expected = tuple(encoder_hidden_shape)[:-1]
        if tuple(np.shape(encoder_attention_mask)) != expected:
            raise ValueError(f"encoder_attention_mask has shape {tuple(np.shape(encoder_attention_mask))} but "
                             f"encoder_hidden_states needs {expected} (batch, encoder seq)")
    if encoder_attention_mask is not None:
        check_mask_values("encoder_attention_mask", encoder_attention_mask)


def rank_message(arg: str, shape: Any) -> str:
    want = "(batch, seq)" if arg == "input_ids" else "(batch, seq, hidden)"
    return f"{arg} has shape {tuple(shape)} but must have shape {want}; a single sequence needs a batch axis"


def check_rank(is_ids: bool, shape) -> None:
    """ids must be 2-D (B, S), embeddings 3-D (B, S, H) (after multiple choice is flattened)."""
    arg, rank = ("input_ids", 2) if is_ids else ("inputs_embeds", 3)
    if len(tuple(shape)) != rank:
        raise ValueError(rank_message(arg, shape))


def empty_message(arg: str, shape: Any) -> str:
    return f"{arg} has shape {tuple(shape)}: sequence length 0; at least one token is needed"


def mask_value_message(arg: str, value: Any) -> str:
    return f"{arg} contains {value}; it must hold only 0 (masked) and 1 (attend)"


def check_mask_values(arg: str, mask) -> None:
    """A mask holds 0 and 1 only (NaN, 2 or 0.5 would silently scale the additive mask)."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return
    bad = ~((m == 0) | (m == 1))
    if bad.any():
        raise ValueError(mask_value_message(arg, m[bad].flat[0].item()))


# ---------------------------------------------------------------------------------------------- labels
# What each label keyword must be, per model class: (integer?, shape rule, upper bound, what sets it).
# Shape rules: "tokens" = the ids' shape (B, S); "batch" = (B,). Lower bound is 0; IGNORE (-100) is
# allowed where the loss ignores it. Question-answering positions are clamped by the loss (HF), so
# they are checked for dtype and shape only (bound None).
IGNORE_INDEX = -100


def label_rules(config: BertConfig, model_class: str, num_choices: int | None = None
                ) -> dict[str, tuple[bool, str, int | None, str, bool]]:
    """``{label keyword: (must be integer, shape rule, exclusive upper bound or None, what sets it,
    -100 allowed)}`` for ``model_class``. Sequence classification with float labels (regression,
    multi-label) is handled by ``check_labels`` itself."""
    V, L = config.vocab_size, config.num_labels
    mlm = (True, "tokens", V, "config.vocab_size", True)
    nsp = (True, "batch", 2, "the two NSP classes", False)
    return {
        "BertModel": {},
        "BertForPreTraining": {"labels": mlm, "next_sentence_label": nsp},
        "BertLMHeadModel": {"labels": mlm},
        "BertForMaskedLM": {"labels": mlm},
        "BertForNextSentencePrediction": {"labels": nsp},
        "BertForSequenceClassification": {"labels": (True, "batch", L, "config.num_labels", True)},
        "BertForMultipleChoice": {"labels": (True, "batch", num_choices, "num_choices", True)},
        "BertForTokenClassification": {"labels": (True, "tokens", L, "config.num_labels", True)},
        "BertForQuestionAnswering": {"start_positions": (True, "batch", None, "", False),
                                     "end_positions": (True, "batch", None, "", False)},
    }[model_class]


def label_range_message(arg: str, value: Any, limit: int, source: str, ignore: bool) -> str:
    extra = f" (or {IGNORE_INDEX} to ignore a position)" if ignore else ""
    return f"{arg} contains {value}, outside the valid range [0, {limit}){extra} set by {source}={limit}"


def check_labels(config: BertConfig, model_class: str, labels: dict, input_shape, problem: str | None = None
                 ) -> None:
    """Labels (NumPy) against the rules of ``label_rules``; ``input_shape`` is the ids' shape before any
    flattening ((B, S), or (B, C, S) for multiple choice). ``problem`` is the sequence-classification
    problem type already chosen (``bert_common.semantics.problem_type``). Raises ValueError."""
    input_shape = tuple(input_shape)
    B = input_shape[0]
    choices = input_shape[1] if model_class == "BertForMultipleChoice" and len(input_shape) > 2 else None
    rules = label_rules(config, model_class, choices)
    for arg, value in labels.items():
        if value is None or arg not in rules:
            continue
        a = np.asarray(value)
        integer, rule, limit, source, ignore = rules[arg]
        if model_class == "BertForSequenceClassification" and problem in ("regression",
                                                                         "multi_label_classification"):
            want = (B,) if problem == "regression" and config.num_labels == 1 else (B, config.num_labels)
            if problem == "regression" and config.num_labels == 1 and a.shape in ((B, 1),):
                continue
            if a.shape != want:
                raise ValueError(f"{arg} has shape {a.shape} but {problem} needs {want} (batch"
                                 f"{', config.num_labels' if len(want) == 2 else ''})")
            if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
                raise ValueError(f"{arg} must hold numbers, got dtype {a.dtype}")
            continue
        if integer and not (np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_):
            what = ("class indices" if model_class != "BertForQuestionAnswering" else "token positions")
            raise ValueError(f"{arg} must hold integers ({what}), got dtype {a.dtype}")
        want = (B,) if rule == "batch" else (B,) + input_shape[-1:]
        if a.shape != want:
            raise ValueError(f"{arg} has shape {a.shape} but must have shape {want} "
                             f"({'batch' if rule == 'batch' else 'batch, seq'}) to match input_ids {input_shape}")
        if limit is None:
            continue
        bad = ((a < 0) | (a >= limit)) & ~((a == IGNORE_INDEX) if ignore else False)
        if bad.any():
            raise ValueError(label_range_message(arg, int(a[bad].flat[0]), limit, source, ignore))
