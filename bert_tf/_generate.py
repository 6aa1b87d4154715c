"""``BertLMHeadModel.generate`` under XLA with a fixed-size cache (kept out of ``modeling.py``).

``bert_common.generation.generate`` calls ``step(ids, mask, past)`` once per token. With the ordinary
cache the key length grows by one per step, so every step would be a new XLA program. Here the cache
is a fixed window instead, right-aligned: after the prompt (``prefill``, one program per prompt shape)
every step (one program per window shape) feeds the new token at its explicit position ``p``, with a
window of ``W`` earlier key slots (B, N, W, D) whose last ``p`` slots hold positions 0 .. p-1 and whose
first ``W - p`` slots are empty and masked (the mask is left-padded with zeros). The model's ordinary
cache path appends the new key (W + 1 keys), and the next window drops the oldest slot. Keys sit at slot
``position + W - p``: a shift shared by the query and every key, so relative distances and the causal
rule are unchanged, and masked slots contribute exactly 0 after the softmax — the same tokens as the
growing cache, without a new shape per step. Cross-attention keys (computed in the prefill) pass
through unchanged. User calls with ``past_key_values`` keep the ordinary growing cache.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_common import varlen
from bert_tf._keras import check_eager

WINDOW_MULTIPLE = 32
# Fewer new tokens run the growing cache eagerly: compiling the two programs (seconds on CPU) costs more
# than a few eager steps; the programs are kept per model, so later calls of any length are fast.
MIN_NEW_TOKENS = 8
# Config keys the forward never reads (generation only): changing them keeps the compiled programs.
_GENERATION_ONLY = ("eos_token_id",)


def _forward_config(model) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k not in _GENERATION_ONLY}


class FixedCacheDecoder:
    """The two XLA programs of one model's cached decoding, reused across ``generate`` calls
    (``tf.function`` keeps one trace per input shape; ``trace_count`` counts them)."""

    def __init__(self, model):
        self.model = model
        # Config values are read while tracing: a changed config needs new programs (see fixed_cache_step).
        self.config = _forward_config(model)
        self.prefill = tf.function(self._prefill, jit_compile=True)
        self.step = tf.function(self._step, jit_compile=True)

    @property
    def trace_count(self) -> int:
        return self.prefill.experimental_get_tracing_count() + self.step.experimental_get_tracing_count()

    def _prefill(self, ids, mask, window, encoder):
        """ids, mask (B, P) -> last logits (B, V), the window cache (each self k/v (B, N, window, D),
        right-aligned; cross k/v as computed)."""
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, training=False, **encoder)
        pad = [[0, 0], [0, 0], [window - ids.shape[1], 0], [0, 0]]
        cache = tuple((tf.pad(k, pad), tf.pad(v, pad)) + tuple(rest) for k, v, *rest in out["past_key_values"])
        return out["logits"][:, -1], cache

    def _step(self, ids, mask, position, cache, encoder):
        """ids (B, 1) at ``position`` (B, 1), mask (B, W + 1) left-padded -> logits (B, V), next window."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                         use_cache=True, training=False, **encoder)
        cache = tuple((k[:, :, 1:], v[:, :, 1:]) + tuple(rest) for k, v, *rest in out["past_key_values"])
        return out["logits"][:, -1], cache


def fixed_cache_step(model, input_ids, attention_mask, max_new_tokens: int, encoder: dict):
    """A ``step(ids, mask, past)`` for ``bert_common.generation.generate`` running the model's two XLA
    programs, or None when the growing cache runs instead: fewer than ``MIN_NEW_TOKENS`` new tokens, a
    varlen config, or a sequence that would outgrow ``max_position_embeddings`` (the ordinary path raises its ValueError at
    the step that does).
    ``encoder``: ``encoder_hidden_states`` / ``encoder_attention_mask`` when given (NumPy or tensors)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not isinstance(max_new_tokens, int):  # generate raises its own errors
        return None
    if max_new_tokens < MIN_NEW_TOKENS or model.config.attn_implementation == "varlen":
        return None  # varlen refuses a cache: the eager path raises that ValueError plainly
    P = ids.shape[1]
    if P + max_new_tokens - 1 > model.config.max_position_embeddings:
        return None
    # The last step feeds the (n-1)-th new token after P + n - 2 cached ones; the window is rounded up
    # (extra slots are masked) so that calls of nearby lengths share the step program.
    needed = max(P, P + max_new_tokens - 2)
    window = max(needed, min(varlen.round_up(needed, WINDOW_MULTIPLE), model.config.max_position_embeddings - 1))
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    check_eager(model, ids, {"attention_mask": mask, **encoder})  # XLA cannot raise: validate on the host
    decoder = getattr(model, "_fixed_cache_decoder", None)
    if decoder is None or decoder.config != _forward_config(model):
        decoder = FixedCacheDecoder(model)
        object.__setattr__(model, "_fixed_cache_decoder", decoder)  # outside Keras' attribute tracking
    encoder = {k: tf.convert_to_tensor(v) for k, v in encoder.items()}
    ints = tf.int32

    def step(feed, mask_so_far, past):
        if past is None:
            logits, cache = decoder.prefill(tf.constant(feed, ints), tf.constant(mask_so_far, ints),
                                            window, encoder)
            return logits.numpy(), (cache, P)
        cache, p = past
        full = np.zeros((mask_so_far.shape[0], window + 1), np.int32)
        full[:, window - p:] = mask_so_far                                                # (B, W + 1)
        position = np.full((feed.shape[0], 1), p, np.int32)
        logits, cache = decoder.step(tf.constant(feed, ints), tf.constant(full), tf.constant(position), cache,
                                     encoder)
        return logits.numpy(), (cache, p + 1)

    return step
