"""Unpadded ("varlen") execution for ``bert_tf`` (``config.attn_implementation == "varlen"``), kept out of
``modeling.py``; the rule and the host-side plan are ``bert_common.varlen``.

Two modes (``bert_common.semantics.varlen_mode``):

- **unpad** (eager inputs): :func:`unpad` makes the plan on the host and gathers the kept tokens into a
  packed batch (1, T); every layer runs on (1, T, H); :func:`block_attention` gathers each sequence into
  a block of a (G, L) layout, attends within blocks and takes the packed rows back; :func:`restore`
  scatters the outputs to (B, S, H) with 0 at dropped tokens.
- **segments** (inside ``tf.function``, XLA included, or when attention probabilities are asked for):
  the padded layout stays; :func:`segment_mask` is the rule as an additive (B, 1, S, S) mask built with
  in-graph ops only (no data-dependent shapes), and :func:`restore` zeroes the dropped tokens.

Gathers and scatters are ``tf.gather`` / ``tf.scatter_nd``, so gradients flow to the weights and to
``inputs_embeds`` in both modes.

Shape legend: B batch, S padded length, T packed tokens, G blocks, L block length, H hidden, N heads,
D head dim.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from bert_common import varlen
from bert_common.config import BertConfig


class Blocks(NamedTuple):
    """The attention blocks of one unpadded forward, built once in ``BertModel`` and passed to every
    layer in place of the padded additive mask.

    gather (G, L) int32: the packed token in each block slot; slot (T,) int32: ``g * L + l`` of each packed
    token; mask (G, 1, 1|L, L) additive in the mask dtype (0 kept, ``finfo.min`` dropped); relative
    ([G,] L, L) int32 index into ``distance_embedding`` (shared by every block when it can be) or None.
    """
    gather: tf.Tensor
    slot: tf.Tensor
    mask: tf.Tensor
    relative: Any


class Unpadded(NamedTuple):
    """What :func:`unpad` returns: the host ``plan``, the packed ``inputs`` for the embeddings (each
    (1, T) int or, for ``inputs_embeds``, (1, T, H); None where the call gave none) and the ``blocks``."""
    plan: varlen.Plan
    inputs: dict
    blocks: Blocks


def _additive(allowed, dtype: tf.DType):
    """bool (...) -> additive mask (...) in ``dtype``: 0 where allowed, ``dtype.min`` elsewhere."""
    return (1.0 - tf.cast(allowed, dtype)) * dtype.min


# == unpad ===================================================================================================
def unpad(config: BertConfig, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
          attention_mask=None, mask_dtype: tf.DType = tf.float32) -> Unpadded:
    """Eager tensors of the padded call -> :class:`Unpadded` (plan on the host, exact sizes: no bucketing,
    eager TF never recompiles). ``position_ids`` (B|1, S) or None (then the padded default, the column
    index); dummy-free, so every packed token is a kept token of the batch."""
    base = input_ids if input_ids is not None else inputs_embeds[..., 0]
    B, S = (int(d) for d in base.shape)
    mask = None if attention_mask is None else attention_mask.numpy()
    pos = None if position_ids is None else np.broadcast_to(position_ids.numpy(), (B, S))
    plan = varlen.make_plan(mask, pos, (B, S))
    if pos is None:
        pos = np.broadcast_to(np.arange(S, dtype=np.int64), (B, S))

    def take(x):  # (B, S) host ints -> (1, T) tensor of the kept tokens
        return tf.constant(plan.take(np.asarray(x))[None])

    embeds = None
    if inputs_embeds is not None:
        # In-graph gather (not plan.take): gradients reach the caller's embeddings.
        flat = tf.reshape(inputs_embeds, [B * S, -1])
        embeds = tf.gather(tf.concat([flat, tf.zeros_like(flat[:1])], 0), plan.token_index)[None]  # (1, T, H)
    inputs = {"input_ids": None if input_ids is None else take(input_ids.numpy()),
              "token_type_ids": None if token_type_ids is None else take(token_type_ids.numpy()),
              "position_ids": take(pos), "inputs_embeds": embeds}
    allowed = varlen.block_allowed(plan, causal=config.is_decoder)[:, None]             # (G, 1, 1|L, L)
    relative = None
    if config.is_relative:
        # (L, L) when one lane-difference index serves every block (the usual case), else (G, L, L)
        relative = tf.constant(varlen.block_relative_index(plan, config.max_position_embeddings, shared=True))
    blocks = Blocks(tf.constant(plan.gather), tf.constant(plan.slot), _additive(allowed, mask_dtype), relative)
    return Unpadded(plan, inputs, blocks)


def block_attention(layer, hidden_states, blocks: Blocks, head_mask=None, eager: bool = True, training=False):
    """``BertSelfAttention`` on packed tokens: hidden (1, T, H) -> context (1, T, H), probs (G, N, L, L) or
    None (fused), present (k, v) each (1, N, T, D) (the packed batch's cache layout)."""
    N, D = layer.num_heads, layer.head_dim

    def heads(x):  # (1, T, H) -> (T, N, D)
        return tf.reshape(x, [-1, N, D])

    def blocked(x):  # (T, N, D) -> (G, N, L, D)
        return tf.transpose(tf.gather(x, blocks.gather), [0, 2, 1, 3])

    q, k, v = (heads(f(hidden_states)) for f in (layer.query, layer.key, layer.value))
    context, probs = layer.attend(blocked(q), blocked(k), blocked(v), blocks.relative, blocks.mask, head_mask,
                                  eager, training)                                       # (G, N, L, D)
    context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, N * D])              # (G * L, H)
    context = tf.gather(context, blocks.slot)[None]                                      # (1, T, H)
    present = tuple(tf.transpose(x, [1, 0, 2])[None] for x in (k, v))                   # (1, N, T, D)
    return context, probs, present


def _scatter(packed, plan: varlen.Plan):
    """(T, ...) -> (B, S, ...) with 0 at dropped tokens: rows of ``zeros(B * S + 1, ...)`` at
    ``plan.token_index`` (dummies land on the extra row, which is dropped)."""
    B, S = plan.batch, plan.seq
    rest = tf.shape(packed)[1:]
    out = tf.scatter_nd(plan.token_index[:, None], packed, tf.concat([[B * S + 1], rest], 0))[:-1]
    return tf.reshape(out, tf.concat([[B, S], rest], 0))


# == segments ================================================================================================
def segment_ids(attention_mask, position_ids, batch, seq):
    """In-graph ``bert_common.varlen.segment_ids``: (B, S) int32, 0 for dropped tokens, else 1, 2, ...
    numbering the sequences of each row. ``attention_mask`` (B, S) or None, ``position_ids`` (B|1, S) or
    None; ``batch``, ``seq`` may be tensors."""
    kept = tf.ones([batch, seq], tf.bool) if attention_mask is None else tf.not_equal(attention_mask, 0)
    count = tf.cast(kept, tf.int32)
    start = kept & tf.equal(tf.cumsum(count, axis=-1), 1)                               # first kept token
    if position_ids is not None:
        start |= kept & tf.equal(tf.broadcast_to(position_ids, [batch, seq]), 0)       # HF packed restarts
    return tf.cumsum(tf.cast(start, tf.int32), axis=-1) * count


def segment_mask(config: BertConfig, attention_mask, position_ids, batch, seq, dtype: tf.DType = tf.float32):
    """The varlen rule as an additive mask (B, 1, S, S) in ``dtype``: query i sees key j iff both are in
    the same sequence of the row (and j <= i for decoders)."""
    seg = segment_ids(attention_mask, position_ids, batch, seq)                          # (B, S)
    allowed = tf.equal(seg[:, :, None], seg[:, None, :]) & (seg[:, None, :] > 0)         # (B, S, S) [b, i, j]
    if config.is_decoder:
        cols = tf.range(seq)
        allowed &= (cols[None, :] <= cols[:, None])[None]
    return _additive(allowed, dtype)[:, None]


# == back to the padded layout ===============================================================================
def restore(enc: dict, unpadded: Unpadded | None, attention_mask) -> dict:
    """The encoder's outputs in the padded layout with 0 at dropped tokens.

    unpad (``unpadded`` given): last_hidden_state and each hidden_states entry (1, T, H) -> (B, S, H),
    each present (k, v) (1, N, T, D) -> (B, N, S, D). segments (None): hidden states times the kept mask,
    so that both modes give the same numbers everywhere (the pooler reads column 0, also when it is
    dropped). Attention probabilities exist only in segments mode and stay (B, N, S, S).
    """
    out = dict(enc)
    if unpadded is None:
        if attention_mask is None:
            return out
        keep = tf.not_equal(attention_mask, 0)[..., None]                               # (B, S, 1)
        fix = lambda h: h * tf.cast(keep, h.dtype)  # noqa: E731
    else:
        fix = lambda h: _scatter(h[0], unpadded.plan)  # noqa: E731
    out["last_hidden_state"] = fix(enc["last_hidden_state"])
    if enc.get("hidden_states") is not None:
        out["hidden_states"] = tuple(fix(h) for h in enc["hidden_states"])
    if unpadded is not None and enc.get("past_key_values") is not None:
        def kv(x):  # (1, N, T, D) -> (B, N, S, D)
            return tf.transpose(_scatter(tf.transpose(x[0], [1, 0, 2]), unpadded.plan), [0, 2, 1, 3])
        out["past_key_values"] = tuple(tuple(kv(x) for x in layer) for layer in enc["past_key_values"])
    return out
