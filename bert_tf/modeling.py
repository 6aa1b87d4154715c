"""BERT for TensorFlow 2 with Keras 3: one story, top to bottom.

Every module is a ``keras.layers.Layer`` (the models are ``keras.Model``) computing with TensorFlow ops.
Attribute names equal the canonical checkpoint names (``encoder.layer[3].attention.self.query``), so the
variable path ``bert/encoder/layer/3/attention/self/query/kernel`` of ``bert_common.weights.SCHEMES["tf"]``
is found by walking the attribute tree (``_named_variables``); Keras 3's ``variable.path`` is not used.

Shape legend: B batch, S query length, K key length (past + S), E encoder length, H hidden, N heads,
D head dim, I intermediate, V vocab, L labels, C choices.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

# Keras 3 picks its backend at first import from $KERAS_BACKEND. bert_tf computes with TensorFlow ops,
# so it needs Keras' TensorFlow backend: choose it when Keras is not imported yet, refuse otherwise.
if "keras" not in __import__("sys").modules and not os.environ.get("KERAS_BACKEND"):
    os.environ["KERAS_BACKEND"] = "tensorflow"
import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"bert_tf needs Keras' TensorFlow backend, but Keras runs on {keras.backend.backend()!r} "
        f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). Fix: set KERAS_BACKEND=tensorflow before "
        f"Keras is first imported, or use bert_torch / bert_flax for that framework.")
import tensorflow as tf  # noqa: E402

from bert_common import generation  # noqa: E402
from bert_common.config import BertConfig  # noqa: E402
from bert_common.outputs import output_for  # noqa: E402
from bert_common.pretrained import canonical_from_backend, load_for_backend, save_from_backend  # noqa: E402
from bert_common.validation import (check_inputs, input_limits, length_message, range_message,  # noqa: E402
                                    shape_message)
from bert_common.weights import HEADS, head_spec, init_weights, to_scheme  # noqa: E402

SCHEME = "tf"
IGNORE_INDEX = -100
# dtype argument -> Keras dtype policy. "float16"/"bfloat16" keep weights in half precision too.
DTYPE_POLICIES = {None: None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                  "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}


# == helpers =================================================================================================
def _gelu_exact(x):
    return tf.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return tf.nn.gelu(x, approximate=True)


# config.gelu_variant -> function. The variant is explicit in the config, never a framework default.
ACTIVATIONS = {"gelu_exact": _gelu_exact, "gelu_tanh": _gelu_tanh, "relu": tf.nn.relu, "silu": tf.nn.silu,
               "tanh": tf.math.tanh}


def additive_mask(mask, query_length, past_length, causal: bool):
    """(B, K) 1 = attend -> additive fp32 mask (B, 1, 1|S, K) = ``(1 - m) * float32.min``.

    A decoder multiplies in the causal mask (key k visible to query s when k <= past + s) first.
    The mask stays fp32 because scores are added to it in fp32 (see ``BertSelfAttention``).
    """
    m = tf.cast(mask, tf.float32)[:, None, None, :]                                  # (B, 1, 1, K)
    if causal:
        key_length = tf.shape(mask)[-1]
        q = past_length + tf.range(query_length)                                     # (S,)
        k = tf.range(key_length)                                                     # (K,)
        m = m * tf.cast(k[None, :] <= q[:, None], tf.float32)[None, None]            # (B, 1, S, K)
    return (1.0 - m) * tf.float32.min


def _is_xla_tracing() -> bool:
    """True while tracing under ``tf.function(jit_compile=True)``: XLA has no runtime errors or strings."""
    try:
        from tensorflow.python.ops import control_flow_util
        return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except Exception:  # private API moved: assume not XLA, the asserts then fail loudly at compile time
        return False


def _fill(template: str, *parts) -> tf.Tensor:
    """In-graph string: ``template`` with the placeholders ``\\x00``, ``\\x01``, ... replaced by tensors."""
    pieces, rest = [], template
    for i, part in enumerate(parts):
        head, _, rest = rest.partition(chr(i))
        pieces += [head, part if part.dtype == tf.string else tf.strings.as_string(part)]
    return tf.strings.join(pieces + [rest])


def _shape_text(shape) -> tf.Tensor:
    """(r,) int tensor -> string ``"(a, b)"`` as Python prints a tuple of length >= 2."""
    return tf.strings.join(["(", tf.strings.reduce_join(tf.strings.as_string(shape), separator=", "), ")"])


def _shape_template(arg: str) -> str:
    return shape_message(arg, (chr(0),), (chr(1),)).replace(str((chr(0),)), chr(0)).replace(str((chr(1),)), chr(1))


def _graph_checks(config: BertConfig, ids: dict, base_shape, base_static: list, attention_mask, past_length, seq_arg):
    """tf.debugging asserts with the messages of ``bert_common.validation`` (same wording), for traced inputs."""
    checks = []
    for arg, (limit, source) in input_limits(config).items():
        x = ids.get(arg)
        if x is None:
            continue
        flat = tf.reshape(x, [-1])
        bad = (flat < 0) | (flat >= limit)
        # First offending value in C order, as check_inputs reports it (a trailing 0 keeps empty input legal).
        value = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)[tf.argmax(tf.cast(bad, tf.int32))]
        msg = _fill(range_message(arg, chr(0), limit, source), value)
        checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [msg]))
        if arg != "position_ids":
            if x.shape.rank is not None and x.shape.rank != len(base_static):
                raise ValueError(shape_message(arg, x.shape.as_list(), base_static))
            same = tf.reduce_all(tf.equal(tf.shape(x, out_type=tf.int32), base_shape))
            checks.append(tf.debugging.Assert(same, [_fill(_shape_template(arg), _shape_text(tf.shape(x)),
                                                             _shape_text(base_shape))]))
    seq = base_shape[-1]
    limit = config.max_position_embeddings
    checks.append(tf.debugging.Assert(seq + past_length <= limit,
                                      [_fill(length_message(seq_arg, chr(0), chr(1), limit), seq, past_length)]))
    if attention_mask is not None:
        expected = tf.concat([base_shape[:-1], [past_length + seq]], 0)
        static = tf.get_static_value(expected)
        if static is not None and attention_mask.shape.is_fully_defined() and tuple(attention_mask.shape) != tuple(
                static.tolist()):  # known while tracing: fail now, like the eager check
            raise ValueError(shape_message("attention_mask", attention_mask.shape.as_list(), static.tolist()))
        if attention_mask.shape.rank is not None and attention_mask.shape.rank != len(base_static):
            ok = tf.constant(False)  # wrong rank: tf.equal of the shapes could not even broadcast
        else:
            ok = tf.reduce_all(tf.equal(tf.shape(attention_mask, out_type=tf.int32), expected))
        checks.append(tf.debugging.Assert(ok, [_fill(_shape_template("attention_mask"),
                                                     _shape_text(tf.shape(attention_mask)), _shape_text(expected))]))
    return checks


def _encoder_mask_check(encoder_hidden_states, encoder_attention_mask):
    """In-graph twin of check_inputs' encoder mask rule: mask (B, E) must match states (B, E, H)."""
    expected = tf.shape(encoder_hidden_states, out_type=tf.int32)[:-1]
    got, want = encoder_attention_mask.shape, encoder_hidden_states.shape[:-1]
    if got.is_fully_defined() and want.is_fully_defined() and got != want:
        # Known while tracing: fail now (the broadcast below would fail at trace time with a worse message).
        raise ValueError(f"encoder_attention_mask has shape {tuple(got)} but encoder_hidden_states needs "
                         f"{tuple(want)} (batch, encoder seq)")
    if encoder_attention_mask.shape.rank not in (None, 2):
        ok = tf.constant(False)
    else:
        ok = tf.reduce_all(tf.equal(tf.shape(encoder_attention_mask, out_type=tf.int32), expected))
    msg = _fill("encoder_attention_mask has shape \x00 but encoder_hidden_states needs \x01 (batch, encoder seq)",
                _shape_text(tf.shape(encoder_attention_mask)), _shape_text(expected))
    return tf.debugging.Assert(ok, [msg])


def validate_inputs(config: BertConfig, *, input_ids=None, token_type_ids=None, position_ids=None,
                    attention_mask=None, inputs_embeds=None, past_length=0, encoder_hidden_states=None,
                    encoder_attention_mask=None):
    """Check DESIGN §6 before any kernel runs. Returns the list of in-graph assert ops (empty when eager).

    Eager: ``bert_common.validation.check_inputs`` on the concrete values (raises ``ValueError``).
    Traced: ``tf.debugging.Assert`` ops carrying the same message (raise ``InvalidArgumentError``); the
    caller makes the computation depend on them. Under XLA (``jit_compile=True``) there is no runtime
    error mechanism, so nothing is added there (documented in docs/tf.md).
    """
    for arg, x in (("input_ids", input_ids), ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if x is not None and not x.dtype.is_integer:
            raise ValueError(f"{arg} must hold integers, got dtype {x.dtype.name}")
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("one of input_ids or inputs_embeds is required")
    if tf.executing_eagerly():  # concrete values: the shared NumPy check, a plain ValueError
        check_inputs(config, input_ids=None if input_ids is None else input_ids.numpy(),
                     token_type_ids=None if token_type_ids is None else token_type_ids.numpy(),
                     position_ids=None if position_ids is None else position_ids.numpy(),
                     attention_mask=None if attention_mask is None else attention_mask.numpy(),
                     inputs_embeds_shape=None if inputs_embeds is None else tuple(inputs_embeds.shape),
                     past_length=int(past_length),
                     encoder_hidden_shape=None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape),
                     encoder_attention_mask=None if encoder_attention_mask is None else encoder_attention_mask.numpy())
        return []
    if _is_xla_tracing():
        return []
    base = input_ids if input_ids is not None else inputs_embeds[..., 0]
    base_shape = tf.shape(base, out_type=tf.int32)
    ids = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    seq_arg = "input_ids" if input_ids is not None else "inputs_embeds"
    checks = _graph_checks(config, ids, base_shape, base.shape.as_list(), attention_mask,
                           tf.cast(past_length, tf.int32), seq_arg)
    if encoder_hidden_states is not None and encoder_attention_mask is not None:
        checks.append(_encoder_mask_check(encoder_hidden_states, encoder_attention_mask))
    return checks


def _to_tensor(x):
    """NumPy / lists / tensors -> tf.Tensor; floating NumPy becomes float32 (float64 is never wanted)."""
    if x is None or isinstance(x, tf.Tensor):
        return x
    if isinstance(x, tf.Variable):
        return tf.convert_to_tensor(x)
    a = np.asarray(x)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    return tf.convert_to_tensor(a)


def _linear(x, kernel, bias=None):
    """(..., in) @ (in, out) [+ (out,)] -> (..., out), as one 2-D matmul (fastest path, XLA friendly)."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, kernel.shape[0]]), kernel)
    if bias is not None:
        y = y + bias
    return tf.reshape(y, tf.concat([shape[:-1], [kernel.shape[1]]], 0))


@tf.custom_gradient
def _gather(table, ids):
    """table[ids] with a *dense* gradient (rows, dim): Keras optimizers apply IndexedSlices sparsely,
    squaring each duplicate row's slice separately in Adam's second moment, which is not the update
    torch / optax make. (rows, dim), (...) int -> (..., dim)."""
    def grad(dy):
        rows = tf.shape(table)[0]
        flat = tf.reshape(dy, [-1, tf.shape(table)[1]])
        return tf.math.unsorted_segment_sum(flat, tf.reshape(ids, [-1]), rows), None
    return tf.gather(table, ids), grad


class _Module(keras.layers.Layer):
    """Base of every bert_tf layer: weights are created at construction (the model is built at once).

    ``output`` is a class attribute here so the canonical sub-module name ``output`` can be an instance
    attribute (Keras' ``Layer.output`` property would refuse it).
    """
    output = None

    def __init__(self, config: BertConfig, dtype=None, name=None):
        super().__init__(dtype=dtype, name=name)
        self.config = config
        # Dtypes are handled explicitly (the additive mask must stay fp32; Keras would cast it to fp16).
        self._convert_input_args = False

    def weight(self, name: str, shape) -> keras.Variable:
        # The value is filled from bert_common.weights right after the model is constructed.
        return self.add_weight(name=name, shape=tuple(shape), initializer="zeros")


class Dense(_Module):
    """x (..., in) -> (..., out); ``kernel`` (in, out) is the canonical weight transposed."""

    def __init__(self, config, n_in: int, n_out: int, use_bias: bool = True, dtype=None, name=None):
        super().__init__(config, dtype, name)
        self.kernel = self.weight("kernel", (n_in, n_out))
        self.bias = self.weight("bias", (n_out,)) if use_bias else None
        self.built = True

    def call(self, x):
        return _linear(x, self.kernel, self.bias)


class LayerNorm(_Module):
    """Normalise the last axis in fp32 (also under half precision), eps = ``config.layer_norm_eps``."""

    def __init__(self, config, size: int, dtype=None, name=None):
        super().__init__(config, dtype, name)
        self.gamma = self.weight("gamma", (size,))
        self.beta = self.weight("beta", (size,))
        self.built = True

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(var + self.config.layer_norm_eps)
        y = y * tf.cast(self.gamma, tf.float32) + tf.cast(self.beta, tf.float32)
        return tf.cast(y, x.dtype)


class Embedding(_Module):
    """ids (...) int -> (..., dim); ``embeddings`` (rows, dim)."""

    def __init__(self, config, rows: int, dim: int, dtype=None, name=None):
        super().__init__(config, dtype, name)
        self.embeddings = self.weight("embeddings", (rows, dim))
        self.built = True

    def call(self, ids):
        return _gather(tf.convert_to_tensor(self.embeddings), ids)


# == embeddings ==============================================================================================
class BertEmbeddings(_Module):
    """ids (B, S) -> word + token type (+ absolute position) embeddings, LayerNorm, dropout: (B, S, H)."""

    def __init__(self, config, dtype=None, name="embeddings"):
        super().__init__(config, dtype, name)
        H = config.hidden_size
        self.word_embeddings = Embedding(config, config.vocab_size, H, dtype, "word_embeddings")
        # Built also for relative models (unused there) because HF checkpoints always carry it.
        self.position_embeddings = Embedding(config, config.max_position_embeddings, H, dtype, "position_embeddings")
        self.token_type_embeddings = Embedding(config, config.type_vocab_size, H, dtype, "token_type_embeddings")
        self.LayerNorm = LayerNorm(config, H, dtype, "LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob, dtype=dtype)
        self.built = True

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0,
             training=False):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)                              # (B, S, H)
            if self.config.pad_token_id is not None:
                # HF's nn.Embedding(padding_idx=pad): the padding row receives no gradient from the lookup.
                is_pad = tf.equal(input_ids, tf.cast(self.config.pad_token_id, input_ids.dtype))[..., None]
                inputs_embeds = tf.where(is_pad, tf.stop_gradient(inputs_embeds), inputs_embeds)
        seq = tf.shape(inputs_embeds)[1]
        if token_type_ids is None:
            token_type_ids = tf.zeros(tf.shape(inputs_embeds)[:-1], tf.int32)            # (B, S)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.config.position_embedding_type == "absolute":
            if position_ids is None:
                position_ids = (past_length + tf.range(seq))[None, :]                   # (1, S)
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), training=training)


# == attention ===============================================================================================
class BertSelfAttention(_Module):
    """Multi-head scaled dot-product attention (self or cross), with optional relative positions and cache.

    hidden (B, S, H) -> context (B, S, H), probabilities (B, N, S, K), present (k, v) each (B, N, K, D).
    """

    def __init__(self, config, is_cross: bool = False, dtype=None, name="self"):
        super().__init__(config, dtype, name)
        H = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.is_cross = is_cross
        self.query = Dense(config, H, H, dtype=dtype, name="query")
        self.key = Dense(config, H, H, dtype=dtype, name="key")
        self.value = Dense(config, H, H, dtype=dtype, name="value")
        # Cross-attention is always absolute in HF BERT: only self-attention owns distance embeddings.
        self.relative = config.position_embedding_type if (config.is_relative and not is_cross) else None
        if self.relative:
            P = config.max_position_embeddings
            self.distance_embedding = Embedding(config, 2 * P - 1, self.head_dim, dtype, "distance_embedding")
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob, dtype=dtype)
        self.built = True

    def _heads(self, x):
        """(B, T, H) -> (B, N, T, D)."""
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [B, T, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def call(self, hidden, attn_mask=None, head_mask=None, encoder_hidden=None, past=None, past_length=0,
             training=False):
        q = self._heads(self.query(hidden))                                             # (B, N, S, D)
        if self.is_cross and past is not None:
            k, v = past                                            # encoder keys/values, computed once
        elif self.is_cross:
            k, v = self._heads(self.key(encoder_hidden)), self._heads(self.value(encoder_hidden))   # (B, N, E, D)
        else:
            k, v = self._heads(self.key(hidden)), self._heads(self.value(hidden))        # (B, N, S, D)
            if past is not None:
                k = tf.concat([tf.cast(past[0], k.dtype), k], axis=2)                    # (B, N, K, D)
                v = tf.concat([tf.cast(past[1], v.dtype), v], axis=2)
        scores = tf.matmul(q, k, transpose_b=True)                                     # (B, N, S, K)
        if self.relative:
            S, K = tf.shape(q)[2], tf.shape(k)[2]
            # distance = query position - key position; query positions continue after the cache.
            distance = (past_length + tf.range(S))[:, None] - tf.range(K)[None, :]     # (S, K)
            r = self.distance_embedding(distance + self.config.max_position_embeddings - 1)  # (S, K, D)
            r = tf.cast(r, q.dtype)
            scores += tf.einsum("bnsd,skd->bnsk", q, r)
            if self.relative == "relative_key_query":
                scores += tf.einsum("bnkd,skd->bnsk", k, r)
        # Softmax in fp32 (also under half precision); the fp32 mask cannot overflow there.
        scores = tf.cast(scores, tf.float32) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores += attn_mask
        probs = tf.nn.softmax(scores, axis=-1)                                         # (B, N, S, K)
        probs = self.dropout(probs, training=training)
        if head_mask is not None:
            probs = probs * tf.cast(head_mask, tf.float32)[None, :, None, None]          # (N,) per layer
        probs = tf.cast(probs, v.dtype)
        context = tf.matmul(probs, v)                                                  # (B, N, S, D)
        B, S = tf.shape(context)[0], tf.shape(context)[2]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [B, S, self.num_heads * self.head_dim])
        return context, probs, (k, v)


class BertSelfOutput(_Module):
    """(B, S, H) attention context, residual (B, S, H) -> LayerNorm(dropout(dense(context)) + residual)."""

    def __init__(self, config, dtype=None, name="output"):
        super().__init__(config, dtype, name)
        self.dense = Dense(config, config.hidden_size, config.hidden_size, dtype=dtype, name="dense")
        self.LayerNorm = LayerNorm(config, config.hidden_size, dtype, "LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob, dtype=dtype)
        self.built = True

    def call(self, x, residual, training=False):
        return self.LayerNorm(self.dropout(self.dense(x), training=training) + residual)


class BertAttention(_Module):
    """``self`` attention + ``output`` projection: (B, S, H) -> (B, S, H), probs, present (k, v)."""

    def __init__(self, config, is_cross: bool = False, dtype=None, name="attention"):
        super().__init__(config, dtype, name)
        self.self = BertSelfAttention(config, is_cross, dtype, "self")
        self.output = BertSelfOutput(config, dtype, "output")
        self.built = True

    def call(self, hidden, attn_mask=None, head_mask=None, encoder_hidden=None, past=None, past_length=0,
             training=False):
        context, probs, present = self.self(hidden, attn_mask=attn_mask, head_mask=head_mask, encoder_hidden=encoder_hidden,
                                            past=past, past_length=past_length, training=training)
        return self.output(context, hidden, training=training), probs, present


# == layer ===================================================================================================
class BertIntermediate(_Module):
    """(B, S, H) -> activation(dense) (B, S, I); activation from ``config.gelu_variant``."""

    def __init__(self, config, dtype=None, name="intermediate"):
        super().__init__(config, dtype, name)
        self.dense = Dense(config, config.hidden_size, config.intermediate_size, dtype=dtype, name="dense")
        self.act = ACTIVATIONS[config.gelu_variant]
        self.built = True

    def call(self, x):
        return self.act(self.dense(x))


class BertOutput(_Module):
    """(B, S, I), residual (B, S, H) -> LayerNorm(dropout(dense(x)) + residual) (B, S, H)."""

    def __init__(self, config, dtype=None, name="output"):
        super().__init__(config, dtype, name)
        self.dense = Dense(config, config.intermediate_size, config.hidden_size, dtype=dtype, name="dense")
        self.LayerNorm = LayerNorm(config, config.hidden_size, dtype, "LayerNorm")
        self.dropout = keras.layers.Dropout(config.hidden_dropout_prob, dtype=dtype)
        self.built = True

    def call(self, x, residual, training=False):
        return self.LayerNorm(self.dropout(self.dense(x), training=training) + residual)


class BertLayer(_Module):
    """One transformer block: self-attention, [cross-attention], feed-forward. (B, S, H) -> (B, S, H)."""

    def __init__(self, config, dtype=None, name="layer"):
        super().__init__(config, dtype, name)
        self.attention = BertAttention(config, False, dtype, "attention")
        if config.add_cross_attention:
            self.crossattention = BertAttention(config, True, dtype, "crossattention")
        self.intermediate = BertIntermediate(config, dtype, "intermediate")
        self.output = BertOutput(config, dtype, "output")
        self.built = True

    def call(self, hidden, attn_mask=None, head_mask=None, encoder_hidden=None, encoder_mask=None, past=None,
             past_length=0, training=False):
        self_past = None if past is None else past[:2]
        x, probs, present = self.attention(hidden, attn_mask=attn_mask, head_mask=head_mask, past=self_past,
                                           past_length=past_length, training=training)
        cross_probs = None
        if self.config.add_cross_attention and encoder_hidden is not None:
            cross_past = None if past is None or len(past) < 4 else past[2:]
            x, cross_probs, cross_present = self.crossattention(
                x, attn_mask=encoder_mask, head_mask=head_mask, encoder_hidden=encoder_hidden, past=cross_past,
                training=training)
            present = present + cross_present
        out = self.output(self.intermediate(x), x, training=training)
        return out, probs, cross_probs, present


# == encoder =================================================================================================
class BertEncoder(_Module):
    """``layer`` list of ``num_hidden_layers`` blocks; returns last state and the optional collections."""

    def __init__(self, config, dtype=None, name="encoder"):
        super().__init__(config, dtype, name)
        self.layer = [BertLayer(config, dtype, f"layer_{i}") for i in range(config.num_hidden_layers)]
        self.built = True

    def call(self, hidden, attn_mask=None, head_mask=None, encoder_hidden=None, encoder_mask=None, past=None,
             past_length=0, use_cache=False, output_attentions=False, output_hidden_states=False, training=False):
        all_hidden, all_attn, all_cross, presents = [], [], [], []
        for i, block in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, probs, cross_probs, present = block(
                hidden, attn_mask=attn_mask, head_mask=None if head_mask is None else head_mask[i],
                encoder_hidden=encoder_hidden, encoder_mask=encoder_mask,
                past=None if past is None else past[i], past_length=past_length, training=training)
            all_attn.append(probs)
            all_cross.append(cross_probs)
            presents.append(present)
        if output_hidden_states:
            all_hidden.append(hidden)
        return {
            "last_hidden_state": hidden,
            "hidden_states": tuple(all_hidden) if output_hidden_states else None,
            "attentions": tuple(all_attn) if output_attentions else None,
            "cross_attentions": tuple(all_cross) if output_attentions and encoder_hidden is not None
            and self.config.add_cross_attention else None,
            "past_key_values": tuple(presents) if use_cache else None,
        }


# == pooler ==================================================================================================
class BertPooler(_Module):
    """tanh(dense(h[:, 0])): (B, S, H) -> (B, H)."""

    def __init__(self, config, dtype=None, name="pooler"):
        super().__init__(config, dtype, name)
        self.dense = Dense(config, config.hidden_size, config.hidden_size, dtype=dtype, name="dense")
        self.built = True

    def call(self, hidden):
        return tf.math.tanh(self.dense(hidden[:, 0]))


# == model ===================================================================================================
_ARG_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
              "encoder_hidden_states", "encoder_attention_mask", "past_key_values", "use_cache",
              "output_attentions", "output_hidden_states", "return_dict", "labels", "next_sentence_label",
              "start_positions", "end_positions")
_TENSOR_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "encoder_hidden_states", "encoder_attention_mask", "labels", "next_sentence_label",
                "start_positions", "end_positions")
_INT_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "encoder_attention_mask",
             "next_sentence_label", "start_positions", "end_positions")


def _named_variables(obj, prefix: str = ""):
    """Yield ``(scheme path, variable)`` by walking public attributes: sub-layers, lists of them, variables."""
    for name, value in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(value, keras.Variable):
            yield prefix + name, value
        elif isinstance(value, (_Module, BertPreTrainedModel)):
            yield from _named_variables(value, f"{prefix}{name}/")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], _Module):
            for i, item in enumerate(value):
                yield from _named_variables(item, f"{prefix}{name}/{i}/")


def _unpack_inputs(input_ids, kwargs: dict) -> dict:
    """Keras passes ``x`` positionally; a dict ``x`` (``fit``/``predict``/``tf.data``) holds the kwargs."""
    if isinstance(input_ids, Mapping):
        merged = dict(input_ids)
        unknown = set(merged) - set(_ARG_NAMES)
        if unknown:
            raise ValueError(f"inputs dict has unknown keys {sorted(unknown)}; known: {list(_ARG_NAMES)}")
        merged.update({k: v for k, v in kwargs.items() if v is not None})
        return merged
    return {"input_ids": input_ids, **kwargs}


class BertPreTrainedModel(keras.Model):
    """Shared glue: construction from ``bert_common.weights``, canonical state dicts, Keras training hooks.

    ``Cls(config, add_pooling_layer=None, seed=0, dtype=None)``: weights from
    ``bert_common.weights.init_weights(config, cls_name, seed)``, identical to every other backend's.
    ``dtype`` is a Keras dtype policy name (``"mixed_float16"``, ``"mixed_bfloat16"``, ``"bfloat16"`` ...);
    None follows Keras' global policy.
    """
    model_class = "BertModel"
    output = None  # see _Module

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int = 0, dtype=None,
                 _init: bool = True, **kwargs):
        if not isinstance(config, BertConfig):
            raise ValueError(f"config must be a bert_common.BertConfig, got {type(config).__name__}")
        if not isinstance(dtype, keras.DTypePolicy):
            if dtype not in DTYPE_POLICIES:
                raise ValueError(f"dtype={dtype!r} is not one of {list(DTYPE_POLICIES)}")
            dtype = DTYPE_POLICIES[dtype]
        super().__init__(dtype=dtype, **kwargs)
        self.config = config
        # Inputs are converted in _prepare (float labels stay fp32 under mixed precision).
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True  # NumPy batches and dicts of them, positionally
        spec = head_spec(self.model_class)
        self.add_pooling_layer = spec.pooler if add_pooling_layer is None else bool(add_pooling_layer)
        self.load_report = None
        self._build_modules(self.dtype_policy)
        self.built = True
        if _init:
            self.load_canonical_state_dict(init_weights(config, self.model_class, seed, self.add_pooling_layer))

    def _build_modules(self, dtype):  # each class creates its sub-modules here
        raise NotImplementedError

    # ---------------------------------------------------------------- weights
    def named_variables(self) -> dict[str, keras.Variable]:
        """``{tf scheme path: variable}``, e.g. ``bert/encoder/layer/0/attention/self/query/kernel``."""
        return dict(_named_variables(self))

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """``{canonical name: fp32 np.ndarray}`` in HF layout (kernels transposed back)."""
        tensors = {p: np.asarray(tf.cast(v.value, tf.float32)) for p, v in self.named_variables().items()}
        return canonical_from_backend(tensors, self.config, self.model_class, SCHEME, self.add_pooling_layer)

    def load_canonical_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Assign every variable from a canonical state dict (strict: every tensor used once)."""
        tensors = to_scheme(state, SCHEME)
        canonical_from_backend(tensors, self.config, self.model_class, SCHEME, self.add_pooling_layer)  # strict check
        self._assign_scheme(tensors)

    def _assign_scheme(self, tensors: Mapping[str, np.ndarray]) -> None:
        variables = self.named_variables()
        if set(variables) != set(tensors):
            raise ValueError(f"variables and tensors differ: missing {sorted(set(variables) - set(tensors))[:5]}, "
                             f"unexpected {sorted(set(tensors) - set(variables))[:5]}")
        for path, var in variables.items():
            var.assign(tf.cast(np.asarray(tensors[path], np.float32), var.dtype))

    def __call__(self, *args, **kwargs):
        # Eager: validate before Keras' __call__, so the ValueError reaches the caller unchanged (Keras
        # rewrites exceptions raised inside call()). Traced calls validate in-graph inside call().
        if tf.executing_eagerly():
            self._check_eager(args[0] if args else kwargs.get("input_ids"),
                              {k: v for k, v in kwargs.items() if k != "input_ids"})
        return super().__call__(*args, **kwargs)

    def _check_eager(self, input_ids, kwargs):
        """``bert_common.validation.check_inputs`` on concrete inputs (NumPy, lists or eager tensors)."""
        a = _unpack_inputs(input_ids, kwargs)
        arr = {k: None if a.get(k) is None else np.asarray(a[k]) for k in _INT_ARGS}
        for k in ("inputs_embeds", "encoder_hidden_states"):
            arr[k] = None if a.get(k) is None else np.shape(a[k])
        past = a.get("past_key_values")
        check_inputs(self.config, input_ids=arr["input_ids"], token_type_ids=arr["token_type_ids"],
                     position_ids=arr["position_ids"], attention_mask=arr["attention_mask"],
                     inputs_embeds_shape=arr["inputs_embeds"],
                     past_length=0 if past is None else int(np.shape(past[0][0])[2]),
                     encoder_hidden_shape=arr["encoder_hidden_states"],
                     encoder_attention_mask=arr["encoder_attention_mask"])

    # ---------------------------------------------------------------- Keras hooks
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``fit`` trains on the model's own loss when labels are in the inputs (or given as ``y``);
        a loss passed to ``compile`` takes over otherwise."""
        if getattr(self, "_compile_loss", None) is not None or not isinstance(y_pred, Mapping):
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        loss = y_pred.get("loss")
        if loss is None and y is not None:
            labels = dict(y) if isinstance(y, Mapping) else {"labels": y}
            labels = {k: _to_tensor(v) for k, v in labels.items()}
            loss = self.head_loss(y_pred, **labels)
        if loss is None:
            raise ValueError(f"{type(self).__name__}.fit needs labels: put them in the inputs dict "
                             f"(e.g. 'labels') or pass y, or compile with a loss")
        return loss + sum(self.losses) if self.losses else loss

    def head_loss(self, outputs, **labels):
        raise ValueError(f"{type(self).__name__} has no loss")

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        out = self(x, training=False)
        # Inference outputs only: a per-batch loss would be concatenated into a meaningless vector.
        return {k: v for k, v in out.items() if k != "loss"} if isinstance(out, Mapping) else out

    # ---------------------------------------------------------------- call plumbing
    def _prepare(self, input_ids, kwargs):
        """Merge dict inputs, convert NumPy/lists to tensors, fill defaults from the config."""
        a = _unpack_inputs(input_ids, kwargs)
        for k in _TENSOR_ARGS:
            if a.get(k) is not None:
                a[k] = _to_tensor(a[k])
        if a.get("past_key_values") is not None:
            a["past_key_values"] = tf.nest.map_structure(_to_tensor, tuple(tuple(p) for p in a["past_key_values"]))
        c = self.config
        for flag in ("output_attentions", "output_hidden_states", "return_dict"):
            if a.get(flag) is None:
                a[flag] = getattr(c, flag)
        return a

    def _finish(self, a, **fields):
        out = output_for(self.model_class, **fields)
        return out if a["return_dict"] else out.to_tuple()


class BertModel(BertPreTrainedModel):
    """The encoder: ``embeddings``, ``encoder``, optional ``pooler``.

    call(input_ids (B, S) int, attention_mask (B, K), token_type_ids (B, S), position_ids (B|1, S),
    head_mask (N,)|(L, N) float, inputs_embeds (B, S, H), encoder_hidden_states (B, E, H),
    encoder_attention_mask (B, E), past_key_values, use_cache, output_attentions, output_hidden_states,
    return_dict, training) -> BaseModelOutputWithPoolingAndCrossAttentions with last_hidden_state
    (B, S, H) in the compute dtype, pooler_output (B, H), ...
    """
    model_class = "BertModel"

    def _build_modules(self, dtype):
        self.embeddings = BertEmbeddings(self.config, dtype, "embeddings")
        self.encoder = BertEncoder(self.config, dtype, "encoder")
        self.pooler = BertPooler(self.config, dtype, "pooler") if self.add_pooling_layer else None

    def _head_masks(self, head_mask):
        """None | (N,) | (L, N) -> None or a per-layer list of (N,) float tensors."""
        if head_mask is None:
            return None
        L, N = self.config.num_hidden_layers, self.config.num_attention_heads
        shape = tuple(head_mask.shape)
        if shape == (N,):
            return [head_mask] * L
        if shape == (L, N):
            return [head_mask[i] for i in range(L)]
        raise ValueError(f"head_mask has shape {shape}, but must be (num_attention_heads,) = ({N},) or "
                         f"(num_hidden_layers, num_attention_heads) = ({L}, {N})")

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        a = self._prepare(input_ids, dict(
            attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict))
        c = self.config
        past = a["past_key_values"]
        use_cache = a["use_cache"]
        if use_cache is None:
            use_cache = bool(c.use_cache) if c.is_decoder else False
        if use_cache and not c.is_decoder:
            raise ValueError("use_cache=True needs config.is_decoder=True (an encoder has no cache to reuse)")
        past_length = 0 if past is None else tf.shape(past[0][0])[2]
        ids, embeds = a["input_ids"], a["inputs_embeds"]
        if embeds is not None:
            embeds = tf.cast(embeds, self.compute_dtype)
        checks = validate_inputs(c, input_ids=ids, token_type_ids=a["token_type_ids"], position_ids=a["position_ids"],
                                 attention_mask=a["attention_mask"], inputs_embeds=embeds, past_length=past_length,
                                 encoder_hidden_states=a["encoder_hidden_states"],
                                 encoder_attention_mask=a["encoder_attention_mask"])
        if checks:  # every kernel below depends on the checks (CPU gathers would raise first, GPU ones return 0)
            with tf.control_dependencies(checks):
                ids = None if ids is None else tf.identity(ids)
                embeds = None if embeds is None else tf.identity(embeds)
                # Every gathered or broadcast input, not only the ids: a position or token-type gather that
                # does not wait for the asserts may fail first with TF's own message.
                a = {**a, **{k: tf.identity(a[k]) for k in ("token_type_ids", "position_ids", "attention_mask",
                                                             "encoder_hidden_states", "encoder_attention_mask")
                             if a.get(k) is not None}}
        base = ids if ids is not None else embeds[..., 0]
        B, S = tf.shape(base)[0], tf.shape(base)[1]
        mask = a["attention_mask"]
        if mask is None:
            mask = tf.ones([B, past_length + S], tf.int32)
        ext_mask = additive_mask(mask, S, past_length, causal=c.is_decoder)             # (B, 1, 1|S, K)
        enc_hidden, enc_mask = a["encoder_hidden_states"], None
        if enc_hidden is not None:
            if not c.add_cross_attention:
                raise ValueError("encoder_hidden_states given but config.add_cross_attention is False")
            enc_hidden = tf.cast(enc_hidden, self.compute_dtype)
            em = a["encoder_attention_mask"]
            if em is None:
                em = tf.ones(tf.shape(enc_hidden)[:2], tf.int32)
            enc_mask = additive_mask(em, S, 0, causal=False)                             # (B, 1, 1, E)
        x = self.embeddings(input_ids=ids, token_type_ids=a["token_type_ids"], position_ids=a["position_ids"],
                            inputs_embeds=embeds, past_length=past_length, training=training)
        enc = self.encoder(x, attn_mask=ext_mask, head_mask=self._head_masks(a["head_mask"]), encoder_hidden=enc_hidden,
                           encoder_mask=enc_mask, past=past, past_length=past_length, use_cache=use_cache,
                           output_attentions=a["output_attentions"],
                           output_hidden_states=a["output_hidden_states"], training=training)
        pooled = self.pooler(enc["last_hidden_state"]) if self.pooler is not None else None
        return self._finish(a, pooler_output=pooled, **enc)


# == heads ===================================================================================================
class BertPredictionHeadTransform(_Module):
    """dense -> activation(config.hidden_act) -> LayerNorm: (B, S, H) -> (B, S, H)."""

    def __init__(self, config, dtype=None, name="transform"):
        super().__init__(config, dtype, name)
        self.dense = Dense(config, config.hidden_size, config.hidden_size, dtype=dtype, name="dense")
        self.act = ACTIVATIONS[config.gelu_variant]
        self.LayerNorm = LayerNorm(config, config.hidden_size, dtype, "LayerNorm")
        self.built = True

    def call(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(_Module):
    """transform, then ``@ W_emb^T + bias``: (B, S, H) -> (B, S, V). Tied: the word embedding table is
    passed in; untied: own ``decoder`` kernel (H, V)."""

    def __init__(self, config, dtype=None, name="predictions"):
        super().__init__(config, dtype, name)
        self.transform = BertPredictionHeadTransform(config, dtype, "transform")
        if not config.tie_word_embeddings:
            self.decoder = Dense(config, config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype,
                                 name="decoder")
        self.bias = self.weight("bias", (config.vocab_size,))
        self.built = True

    def call(self, x, word_embeddings=None):
        h = self.transform(x)
        if self.config.tie_word_embeddings:
            shape = tf.shape(h)
            logits = tf.matmul(tf.reshape(h, [-1, self.config.hidden_size]), word_embeddings, transpose_b=True)
            logits = tf.reshape(logits, tf.concat([shape[:-1], [self.config.vocab_size]], 0))
        else:
            logits = self.decoder(h)
        return logits + self.bias


class BertHeads(_Module):
    """The ``cls`` namespace: ``predictions`` (MLM) and/or ``seq_relationship`` (NSP, (B, H) -> (B, 2))."""

    def __init__(self, config, mlm: bool, nsp: bool, dtype=None, name="cls"):
        super().__init__(config, dtype, name)
        if mlm:
            self.predictions = BertLMPredictionHead(config, dtype, "predictions")
        if nsp:
            self.seq_relationship = Dense(config, config.hidden_size, 2, dtype=dtype, name="seq_relationship")
        self.built = True


def _ce(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean CE over labels != ignore_index, in fp32. logits (..., L), labels (...) int -> scalar.
    All labels ignored gives 0/0 = NaN, as in Hugging Face."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    labels = tf.reshape(labels, [-1])
    keep = tf.not_equal(labels, ignore_index)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(nll * keep) / tf.reduce_sum(keep)


def causal_lm_loss(logits, labels):
    """Next-token loss: logits[:, :-1] (B, S-1, V) against labels[:, 1:]."""
    return _ce(logits[:, :-1], labels[:, 1:])


class _HeadModel(BertPreTrainedModel):
    """Heads own ``bert`` (a BertModel without its own init) plus their head modules."""
    label_names: tuple[str, ...] = ("labels",)

    def _build_modules(self, dtype):
        self.bert = BertModel(self.config, add_pooling_layer=self.add_pooling_layer, dtype=dtype, _init=False)
        self._build_head(dtype)

    def _bert(self, a, training, **override):
        keys = ("attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "encoder_hidden_states", "encoder_attention_mask", "past_key_values", "use_cache",
                "output_attentions", "output_hidden_states")
        kw = {"input_ids": a.get("input_ids"), **{k: a.get(k) for k in keys}, **override}
        return self.bert(return_dict=True, training=training, **kw)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
             next_sentence_label=None, start_positions=None, end_positions=None, training=False):
        a = self._prepare(input_ids, dict(
            attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, labels=labels, next_sentence_label=next_sentence_label,
            start_positions=start_positions, end_positions=end_positions))
        for k in ("labels", "next_sentence_label", "start_positions", "end_positions"):
            if a.get(k) is not None and k not in self.label_names:
                raise ValueError(f"{type(self).__name__} takes labels {list(self.label_names)}, not {k}")
        fields = self._forward(a, training)
        labels_given = {k: a[k] for k in self.label_names if a.get(k) is not None}
        if len(labels_given) == len(self.label_names):
            fields["loss"] = self.head_loss(fields, **labels_given)
        return self._finish(a, **fields)

    def _word_embeddings(self):
        return tf.convert_to_tensor(self.bert.embeddings.word_embeddings.embeddings)


class BertForPreTraining(_HeadModel):
    """MLM logits (B, S, V) + NSP logits (B, 2); loss = MLM CE + NSP CE (both labels needed)."""
    model_class = "BertForPreTraining"
    label_names = ("labels", "next_sentence_label")

    def _build_head(self, dtype):
        self.cls = BertHeads(self.config, True, True, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"prediction_logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                "seq_relationship_logits": self.cls.seq_relationship(out["pooler_output"]),
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels, next_sentence_label):
        return (_ce(outputs["prediction_logits"], labels)
                + _ce(outputs["seq_relationship_logits"], next_sentence_label))


class BertLMHeadModel(_HeadModel):
    """Causal LM (needs ``config.is_decoder``): logits (B, S, V); loss = CE(logits[:, :-1], labels[:, 1:])."""
    model_class = "BertLMHeadModel"

    def _build_head(self, dtype):
        self.cls = BertHeads(self.config, True, False, dtype)

    def _forward(self, a, training):
        if a.get("labels") is not None:  # training a causal LM never reuses a cache (as in HF and bert_torch)
            a = {**a, "use_cache": False}
        out = self._bert(a, training)
        return {"logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                "past_key_values": out.get("past_key_values"), "hidden_states": out.get("hidden_states"),
                "attentions": out.get("attentions"), "cross_attentions": out.get("cross_attentions")}

    def head_loss(self, outputs, labels):
        return causal_lm_loss(outputs["logits"], labels)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 top_k=None, top_p=None, temperature: float = 1.0, seed: int = 0, eos_token_id=None,
                 pad_token_id=None):
        """Cached greedy/sampled decoding via ``bert_common.generation.generate``. (B, S) -> (B, S + n) int64."""
        if not self.config.is_decoder:
            raise ValueError("generate needs config.is_decoder=True (BertLMHeadModel is a causal LM)")

        def step(ids, mask, past):
            out = self(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), past_key_values=past,
                       use_cache=True, training=False)
            return out["logits"][:, -1].numpy(), out["past_key_values"]

        pad = self.config.pad_token_id if pad_token_id is None else pad_token_id
        return generation.generate(step, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                   do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
                                   seed=seed, eos_token_id=eos_token_id, pad_token_id=pad or 0)


class BertForMaskedLM(_HeadModel):
    """MLM logits (B, S, V); loss = CE over labels != -100."""
    model_class = "BertForMaskedLM"

    def _build_head(self, dtype):
        self.cls = BertHeads(self.config, True, False, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


class BertForNextSentencePrediction(_HeadModel):
    """NSP logits (B, 2) from the pooled output; loss = CE."""
    model_class = "BertForNextSentencePrediction"

    def _build_head(self, dtype):
        self.cls = BertHeads(self.config, False, True, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.cls.seq_relationship(out["pooler_output"]),
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


def sequence_classification_loss(logits, labels, config: BertConfig):
    """HF semantics: ``problem_type`` from the config, else num_labels == 1 -> regression (MSE),
    integer labels -> single-label CE, otherwise multi-label BCE-with-logits (mean). logits (B, L)."""
    problem = config.problem_type
    if problem is None:
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if labels.dtype.is_integer else "multi_label_classification")
    logits = tf.cast(logits, tf.float32)
    if problem == "regression":
        y = tf.cast(labels, tf.float32)
        if config.num_labels == 1:
            logits, y = tf.reshape(logits, [-1]), tf.reshape(y, [-1])
        return tf.reduce_mean(tf.square(logits - y))
    if problem == "single_label_classification":
        return _ce(logits, labels)
    y = tf.cast(labels, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))


class BertForSequenceClassification(_HeadModel):
    """dropout(pooled) -> ``classifier``: logits (B, L); loss per ``sequence_classification_loss``."""
    model_class = "BertForSequenceClassification"

    def _build_head(self, dtype):
        self.dropout = keras.layers.Dropout(self.config.classifier_dropout_prob, dtype=dtype)
        self.classifier = Dense(self.config, self.config.hidden_size, self.config.num_labels, dtype=dtype,
                                name="classifier")

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.classifier(self.dropout(out["pooler_output"], training=training)),
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels):
        return sequence_classification_loss(outputs["logits"], labels, self.config)


class BertForMultipleChoice(_HeadModel):
    """Inputs (B, C, S) are flattened to (B*C, S); ``classifier`` scores each pooled choice: logits (B, C)."""
    model_class = "BertForMultipleChoice"

    def _build_head(self, dtype):
        self.dropout = keras.layers.Dropout(self.config.classifier_dropout_prob, dtype=dtype)
        self.classifier = Dense(self.config, self.config.hidden_size, 1, dtype=dtype, name="classifier")

    def _forward(self, a, training):
        lead = a["input_ids"] if a.get("input_ids") is not None else a["inputs_embeds"][..., 0]
        if lead.shape.rank != 3:
            raise ValueError(f"BertForMultipleChoice needs inputs of shape (batch, num_choices, seq), got "
                             f"{tuple(lead.shape)}")
        C = tf.shape(lead)[1]
        flat = {}
        for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
            x = a.get(k)
            flat[k] = None if x is None else tf.reshape(x, tf.concat([[-1], tf.shape(x)[-1:]], 0))   # (B*C, S)
        if a.get("inputs_embeds") is not None:
            e = a["inputs_embeds"]
            flat["inputs_embeds"] = tf.reshape(e, tf.concat([[-1], tf.shape(e)[-2:]], 0))       # (B*C, S, H)
        out = self._bert(a, training, **flat)
        logits = self.classifier(self.dropout(out["pooler_output"], training=training))       # (B*C, 1)
        return {"logits": tf.reshape(logits, [-1, C]), "hidden_states": out.get("hidden_states"),
                "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


class BertForTokenClassification(_HeadModel):
    """dropout(h) -> ``classifier``: logits (B, S, L); loss = CE over labels != -100."""
    model_class = "BertForTokenClassification"

    def _build_head(self, dtype):
        self.dropout = keras.layers.Dropout(self.config.classifier_dropout_prob, dtype=dtype)
        self.classifier = Dense(self.config, self.config.hidden_size, self.config.num_labels, dtype=dtype,
                                name="classifier")

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.classifier(self.dropout(out["last_hidden_state"], training=training)),
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """(CE(start) + CE(end)) / 2; positions (B,) clamped to [0, S] and S (outside the text) ignored."""
    S = tf.shape(start_logits)[1]
    losses = []
    for logits, pos in ((start_logits, start_positions), (end_logits, end_positions)):
        pos = tf.clip_by_value(tf.reshape(tf.cast(pos, tf.int32), [-1]), 0, S)
        losses.append(_ce(logits, tf.where(pos == S, IGNORE_INDEX, pos)))    # ignore_index = S
    return (losses[0] + losses[1]) / 2.0


class BertForQuestionAnswering(_HeadModel):
    """``qa_outputs``: (B, S, H) -> start/end logits (B, S) each; needs ``config.num_labels == 2``.
    Loss: positions clamped to [0, S], index S ignored, (CE(start) + CE(end)) / 2."""
    model_class = "BertForQuestionAnswering"
    label_names = ("start_positions", "end_positions")

    def _build_head(self, dtype):
        if self.config.num_labels != 2:
            raise ValueError(f"BertForQuestionAnswering needs config.num_labels=2 (start, end), got "
                             f"{self.config.num_labels}")
        self.qa_outputs = Dense(self.config, self.config.hidden_size, 2, dtype=dtype, name="qa_outputs")

    def _forward(self, a, training):
        out = self._bert(a, training)
        logits = self.qa_outputs(out["last_hidden_state"])                                    # (B, S, 2)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1],
                "hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def head_loss(self, outputs, start_positions, end_positions):
        return span_loss(outputs["start_logits"], outputs["end_logits"], start_positions, end_positions)


# == loading =================================================================================================
MODEL_CLASSES = {cls.model_class: cls for cls in (
    BertModel, BertForPreTraining, BertLMHeadModel, BertForMaskedLM, BertForNextSentencePrediction,
    BertForSequenceClassification, BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering)}
assert tuple(MODEL_CLASSES) == tuple(HEADS), "class table must follow bert_common.weights.HEADS"


def _from_pretrained(cls, path, *, config=None, allow_new_head=False, add_pooling_layer=None, dtype=None,
                     seed=0, **config_overrides):
    """Read a HF-style directory (config.json + weights in any supported format) into ``cls``."""
    config, tensors, report = load_for_backend(path, cls.model_class, SCHEME, config=config,
                                               allow_new_head=allow_new_head, add_pooling_layer=add_pooling_layer,
                                               seed=seed, **config_overrides)
    model = cls(config, add_pooling_layer=add_pooling_layer, dtype=dtype, _init=False)
    model._assign_scheme(tensors)
    model.load_report = report
    return model


def _save_pretrained(self, path, shard_size=None) -> str:
    """Write ``config.json`` + ``model.safetensors`` (canonical names, fp32)."""
    tensors = {p: np.asarray(tf.cast(v.value, tf.float32)) for p, v in self.named_variables().items()}
    return save_from_backend(path, tensors, self.config, self.model_class, SCHEME, self.add_pooling_layer,
                             shard_size=shard_size)


BertPreTrainedModel.from_pretrained = classmethod(_from_pretrained)
BertPreTrainedModel.save_pretrained = _save_pretrained


def serving_fn(model: BertPreTrainedModel, int_dtype=tf.int32):
    """A ``tf.function`` with signature (input_ids, attention_mask, token_type_ids) each (None, None) int,
    returning a plain dict of the model's tensors (dynamic batch and sequence length)."""
    spec = [tf.TensorSpec([None, None], int_dtype, name=n) for n in ("input_ids", "attention_mask", "token_type_ids")]
    if model.model_class == "BertForMultipleChoice":
        spec = [tf.TensorSpec([None, None, None], int_dtype, name=s.name) for s in spec]

    @tf.function(input_signature=spec)
    def serve(input_ids, attention_mask, token_type_ids):
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    use_cache=False, training=False, return_dict=True)
        return {k: v for k, v in out.items() if isinstance(v, tf.Tensor)}

    return serve


def export_saved_model(model: BertPreTrainedModel, path, tokenizer=None, int_dtype=tf.int32) -> str:
    """Write a SavedModel whose ``serving_default`` takes ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (None, None) int and returns the output tensors by name.

    With ``tokenizer`` (a ``bert_tf.TFBertTokenizer`` or any callable mapping a (B,) tf.string tensor to a
    dict with those three keys) a second signature ``serving_text`` takes ``text`` (B,) strings.
    Reload with ``tf.saved_model.load(path).signatures["serving_default"]``.
    """
    path = os.fspath(path)
    module = tf.Module()
    module.variables_ = [v.value for v in model.named_variables().values()]
    serve = serving_fn(model, int_dtype)
    module.serve = serve
    signatures = {"serving_default": serve}
    if tokenizer is not None:
        module.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text):
            enc = tokenizer(text)
            return serve(tf.cast(enc["input_ids"], int_dtype), tf.cast(enc["attention_mask"], int_dtype),
                         tf.cast(enc["token_type_ids"], int_dtype))

        module.serve_text = serve_text
        signatures["serving_text"] = serve_text
    tf.saved_model.save(module, path, signatures=signatures)
    return path
