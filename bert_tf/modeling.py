"""BERT for TensorFlow 2 with Keras 3: one story, top to bottom.

Every module is a ``keras.layers.Layer`` (the models are ``keras.Model``) computing with TensorFlow ops.
Attribute names equal the canonical checkpoint names (``encoder.layer[3].attention.self.query``), so the
variable path ``bert/encoder/layer/3/attention/self/query/kernel`` of ``bert_common.weights.SCHEMES["tf"]``
is found by walking the attribute tree (``_named_variables``); Keras 3's ``variable.path`` is not used.

Shape legend: B batch, S query length, K key length (past + S), E encoder length, H hidden, N heads,
D head dim, I intermediate, V vocab, L labels, C choices.

Every rule that is not a tensor operation comes from ``bert_common.semantics``; the model glue (dtype
policy, call preparation and output packing, loading and saving bodies) lives in ``bert_tf._base``,
validation for eager, graph and XLA execution in ``bert_tf._graph``, SavedModel serving in
``bert_tf.export``, unpadded ("varlen") execution in ``bert_tf._varlen``, the head losses in
``bert_tf._losses`` and the fixed-size cache of ``generate`` in ``bert_tf._generate``.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

# Keras 3 picks its backend at first import from $KERAS_BACKEND. bert_tf computes with TensorFlow ops,
# so it needs Keras' TensorFlow backend: choose it when Keras is not imported yet, refuse otherwise.
if "keras" not in __import__("sys").modules and not os.environ.get("KERAS_BACKEND"):
    os.environ["KERAS_BACKEND"] = "tensorflow"
from bert_common.backend import own_framework_only  # noqa: E402

with own_framework_only("tf"):  # TensorFlow would import jax for its lite converter when jax is installed
    import tensorflow as tf  # noqa: E402
# Keras after TensorFlow: its TensorFlow backend finds it loaded; any other Keras backend is refused below.
import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"bert_tf needs Keras' TensorFlow backend, but Keras runs on {keras.backend.backend()!r} "
        f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). Fix: set KERAS_BACKEND=tensorflow before "
        f"Keras is first imported, or use bert_torch / bert_flax for that framework.")

from bert_common import semantics  # noqa: E402
from bert_common.config import BertConfig  # noqa: E402
from bert_common.weights import match_state_dict  # noqa: E402
from bert_tf._base import BACKEND, DTYPE_POLICIES, SCHEME, ModelBase, dtype_policy  # noqa: E402,F401
from bert_tf._graph import checked_inputs, poison  # noqa: E402
from bert_tf._keras import Dense, Embedding, KerasHooks, _Module, _named_variables, _recompute  # noqa: E402
from bert_tf._losses import _ce, causal_lm_loss, sequence_classification_loss, span_loss  # noqa: E402
from bert_tf.export import export_saved_model, serving_fn  # noqa: E402,F401  (re-exported)
from bert_tf._varlen import Blocks, block_attention, restore, segment_mask, unpad  # noqa: E402

IGNORE_INDEX = semantics.IGNORE_INDEX


# == helpers =================================================================================================
# config.gelu_variant -> function. The variant is explicit in the config, never a framework default.
ACTIVATIONS = {"gelu_exact": lambda x: tf.nn.gelu(x, approximate=False),
               "gelu_tanh": lambda x: tf.nn.gelu(x, approximate=True), "relu": tf.nn.relu, "silu": tf.nn.silu,
               "tanh": tf.math.tanh}


def additive_mask(mask, query_length, past_length, causal: bool, dtype=tf.float32):
    """(B, K) 1 = attend -> additive mask (B, 1, 1|S, K) = ``(1 - m) * finfo(dtype).min``.

    A decoder multiplies in the causal mask (key k visible to query s when k <= past + s) first.
    ``dtype`` per ``semantics.mask_dtype``: fp32 for eager attention (scores are added to it in fp32).
    """
    m = tf.cast(mask, dtype)[:, None, None, :]                                       # (B, 1, 1, K)
    if causal:
        key_length = tf.shape(mask)[-1]
        q = past_length + tf.range(query_length)                                     # (S,)
        k = tf.range(key_length)                                                     # (K,)
        m = m * tf.cast(k[None, :] <= q[:, None], dtype)[None, None]                 # (B, 1, S, K)
    return (1.0 - m) * dtype.min


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

    def __init__(self, config, is_cross_attention: bool = False, dtype=None, name="self"):
        super().__init__(config, dtype, name)
        H = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.is_cross_attention = is_cross_attention
        self.query = Dense(config, H, H, dtype=dtype, name="query")
        self.key = Dense(config, H, H, dtype=dtype, name="key")
        self.value = Dense(config, H, H, dtype=dtype, name="value")
        # Cross-attention is always absolute in HF BERT: only self-attention owns distance embeddings.
        self.relative = config.position_embedding_type if (config.is_relative and not is_cross_attention) else None
        if self.relative:
            P = config.max_position_embeddings
            self.distance_embedding = Embedding(config, 2 * P - 1, self.head_dim, dtype, "distance_embedding")
        self.dropout = keras.layers.Dropout(config.attention_probs_dropout_prob, dtype=dtype)
        self.built = True

    def _heads(self, x):
        """(B, T, H) -> (B, N, T, D)."""
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [B, T, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             past_key_value=None, past_length=0, eager=True, training=False):
        if isinstance(attention_mask, Blocks):  # varlen "unpad": packed tokens (1, T, H), bert_tf._varlen
            return block_attention(self, hidden_states, attention_mask, head_mask, eager, training)
        q = self._heads(self.query(hidden_states))                                      # (B, N, S, D)
        if self.is_cross_attention and past_key_value is not None:
            k, v = past_key_value                                  # encoder keys/values, computed once
        elif self.is_cross_attention:
            k = self._heads(self.key(encoder_hidden_states))                            # (B, N, E, D)
            v = self._heads(self.value(encoder_hidden_states))
        else:
            k, v = self._heads(self.key(hidden_states)), self._heads(self.value(hidden_states))  # (B, N, S, D)
            if past_key_value is not None:
                k = tf.concat([tf.cast(past_key_value[0], k.dtype), k], axis=2)          # (B, N, K, D)
                v = tf.concat([tf.cast(past_key_value[1], v.dtype), v], axis=2)
        index = None
        if self.relative:
            M = self.config.max_position_embeddings
            index = semantics.relative_distance_index(tf.range, tf.shape(q)[2], tf.shape(k)[2], past_length, M)
            # Clipped: varlen rows may be longer than M; their cross-sequence pairs are masked but must
            # still index a real row (a no-op otherwise: validation keeps past + S <= M).
            index = tf.clip_by_value(index, 0, 2 * M - 2)                               # (S, K)
        context, probs = self.attend(q, k, v, index, attention_mask, head_mask, eager, training)
        B, S = tf.shape(context)[0], tf.shape(context)[2]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [B, S, self.num_heads * self.head_dim])
        return context, probs, (k, v)

    def attend(self, q, k, v, index, attention_mask, head_mask=None, eager=True, training=False):
        """q (B, N, S, D), k and v (B, N, K, D), relative ``index`` (S, K) | (B, S, K) int or None, additive
        mask broadcastable to (B, N, S, K) -> context (B, N, S, D), probs (B, N, S, K) or None (fused).
        B may be varlen blocks (G)."""
        relative = None
        if index is not None:
            r = tf.cast(self.distance_embedding(index), q.dtype)                        # (B?, S, K, D)
            b = "" if index.shape.rank == 2 else "b"
            relative = tf.einsum(f"bnsd,{b}skd->bnsk", q, r)
            if self.relative == "relative_key_query":
                relative += tf.einsum(f"bnkd,{b}skd->bnsk", k, r)
        probs = None
        if eager:
            scores = tf.matmul(q, k, transpose_b=True)                                  # (B, N, S, K)
            if relative is not None:
                scores += relative
            # Softmax in fp32 (also under half precision); the fp32 mask cannot overflow there.
            scores = tf.cast(scores, tf.float32) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores += attention_mask
            probs = tf.nn.softmax(scores, axis=-1)                                      # (B, N, S, K)
            probs = self.dropout(probs, training=training)
            if head_mask is not None:
                probs = probs * tf.cast(head_mask, tf.float32)[None, :, None, None]       # (N,) per layer
            probs = tf.cast(probs, v.dtype)
            context = tf.matmul(probs, v)                                               # (B, N, S, D)
        else:  # Keras' fused attention; relative scores join the additive bias, scaled like q·k
            bias = attention_mask
            if relative is not None:
                rel = relative / math.sqrt(self.head_dim)
                bias = rel if bias is None else rel + tf.cast(bias, rel.dtype)
            context = keras.ops.dot_product_attention(
                tf.transpose(q, [0, 2, 1, 3]), tf.transpose(k, [0, 2, 1, 3]), tf.transpose(v, [0, 2, 1, 3]),
                bias=None if bias is None else tf.cast(bias, q.dtype), scale=1.0 / math.sqrt(self.head_dim))
            context = tf.transpose(context, [0, 2, 1, 3])                               # (B, N, S, D)
        return context, probs


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

    def __init__(self, config, is_cross_attention: bool = False, dtype=None, name="attention"):
        super().__init__(config, dtype, name)
        self.self = BertSelfAttention(config, is_cross_attention, dtype, "self")
        self.output = BertSelfOutput(config, dtype, "output")
        self.built = True

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             past_key_value=None, past_length=0, eager=True, training=False):
        context, probs, present = self.self(
            hidden_states, attention_mask=attention_mask, head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states, past_key_value=past_key_value, past_length=past_length,
            eager=eager, training=training)
        return self.output(context, hidden_states, training=training), probs, present


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

    def feed_forward(self, x, training=False):
        """(B, S, H) -> (B, S, H), one ``semantics.feed_forward_chunks`` slice at a time (S static)."""
        parts = [self.output(self.intermediate(x[:, a:b]), x[:, a:b], training=training)
                 for a, b in semantics.feed_forward_chunks(self.config, x.shape[1])]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             encoder_attention_mask=None, past_key_value=None, past_length=0, eager=True, training=False):
        self_past = None if past_key_value is None else past_key_value[:2]
        x, probs, present = self.attention(hidden_states, attention_mask=attention_mask, head_mask=head_mask,
                                           past_key_value=self_past, past_length=past_length, eager=eager,
                                           training=training)
        cross_probs = None
        cross_past = None if past_key_value is None or len(past_key_value) < 4 else past_key_value[2:]
        if self.config.add_cross_attention and (encoder_hidden_states is not None or cross_past is not None):
            x, cross_probs, cross_present = self.crossattention(
                x, attention_mask=encoder_attention_mask, head_mask=head_mask,
                encoder_hidden_states=encoder_hidden_states, past_key_value=cross_past, eager=eager,
                training=training)
            present = present + cross_present
        return self.feed_forward(x, training=training), probs, cross_probs, present


# == encoder =================================================================================================
class BertEncoder(_Module):
    """``layer`` list of ``num_hidden_layers`` blocks; returns last state and the optional collections."""

    def __init__(self, config, dtype=None, name="encoder"):
        super().__init__(config, dtype, name)
        self.layer = [BertLayer(config, dtype, f"layer_{i}") for i in range(config.num_hidden_layers)]
        self.built = True

    def call(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             encoder_attention_mask=None, past_key_values=None, past_length=0, use_cache=False,
             output_attentions=False, output_hidden_states=False, eager=True, training=False):
        hidden = hidden_states
        all_hidden, all_attn, all_cross, presents = [], [], [], []
        for i, block in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden)
            kw = dict(attention_mask=attention_mask, head_mask=None if head_mask is None else head_mask[i],
                      encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                      past_key_value=None if past_key_values is None else past_key_values[i],
                      past_length=past_length, eager=eager, training=training)
            if self.config.gradient_checkpointing and training:
                hidden, probs, cross_probs, present = _recompute(block, hidden, kw)
            else:
                hidden, probs, cross_probs, present = block(hidden, **kw)
            all_attn.append(probs)
            all_cross.append(cross_probs)
            presents.append(present)
        if output_hidden_states:
            all_hidden.append(hidden)
        return {
            "last_hidden_state": hidden,
            "hidden_states": tuple(all_hidden) if output_hidden_states else None,
            "attentions": tuple(all_attn) if output_attentions else None,
            "cross_attentions": tuple(all_cross) if output_attentions and all_cross[0] is not None else None,
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
class BertPreTrainedModel(ModelBase, KerasHooks, keras.Model):
    """Shared glue: construction from ``bert_common.weights``, canonical state dicts, Keras training hooks.

    ``Cls(config, add_pooling_layer=None, seed=0, dtype=None)``: weights from
    ``bert_common.weights.init_weights(config, cls_name, seed)``, identical to every other backend's.
    ``dtype`` is a Keras dtype policy name (``"mixed_float16"``, ``"mixed_bfloat16"``, ``"bfloat16"`` ...);
    None follows Keras' global policy. The private plumbing (construction, warnings, call preparation and
    output packing, eager / XLA entry checks) is ``bert_tf._base.ModelBase``; ``fit`` / ``predict`` hooks
    are ``bert_tf._keras.KerasHooks``.
    """
    model_class = "BertModel"
    output = None  # see _Module

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int = 0, dtype=None,
                 _init: bool = True, **kwargs):
        if not isinstance(config, BertConfig):
            raise ValueError(f"config must be a bert_common.BertConfig, got {type(config).__name__}")
        semantics.check_head_config(self.model_class, config)
        super().__init__(dtype=dtype_policy(dtype), **kwargs)
        self.config = config
        self._building(add_pooling_layer)
        self.load_report = None
        self._warned: set[str] = set()
        self._build_modules(self.dtype_policy)
        self._finish(seed, _init)

    def _build_modules(self, dtype):  # each class creates its sub-modules here
        raise NotImplementedError

    # ========================================================================================== loading
    def named_variables(self) -> dict[str, keras.Variable]:
        """``{tf scheme path: variable}``, e.g. ``bert/encoder/layer/0/attention/self/query/kernel``."""
        return dict(_named_variables(self, (_Module, BertPreTrainedModel)))

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """``{canonical name: fp32 np.ndarray}`` in HF layout (kernels transposed back)."""
        return self._canonical_state_dict()

    def load_canonical_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Assign every variable from a canonical state dict (strict: every tensor used once)."""
        self._load_canonical_state_dict(state)

    @classmethod
    def from_pretrained(cls, path, *, config: BertConfig | None = None, allow_new_head: bool = False,
                        add_pooling_layer: bool | None = None, dtype=None, seed: int = 0, **config_overrides):
        """Read a HF-style directory (config.json + weights in any supported format) into ``cls``."""
        return cls._from_pretrained(path, config, allow_new_head, add_pooling_layer, dtype, seed, config_overrides)

    def save_pretrained(self, path, shard_size=None) -> str:
        """Write ``config.json`` + ``model.safetensors`` (canonical names, fp32)."""
        return self._save_pretrained(path, shard_size)


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

    def head_mask_per_layer(self, head_mask):
        """None | (N,) | (L, N) -> None or a per-layer list of (N,) float tensors."""
        if head_mask is None:
            return None
        L = self.config.num_hidden_layers
        shared = semantics.head_mask_kind(self.config, head_mask.shape) == "shared"
        return [head_mask if shared else head_mask[i] for i in range(L)]

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
        use_cache = semantics.use_cache(c, self.model_class, a["use_cache"],
                                        checkpointing_in_training=bool(c.gradient_checkpointing and training))
        past_length = 0 if past is None else tf.shape(past[0][0])[2]
        ids, embeds = a["input_ids"], a["inputs_embeds"]
        if embeds is not None:
            embeds = tf.cast(embeds, self.compute_dtype)
        if a["encoder_hidden_states"] is not None and not c.add_cross_attention:
            raise ValueError("encoder_hidden_states was given but config.add_cross_attention=False")
        mode = semantics.varlen_mode(c, tf.executing_eagerly(), a["output_attentions"], a)  # None unless varlen
        a, ids, embeds = checked_inputs(c, a, ids, embeds, past_length)  # traced: every kernel waits for asserts
        eager, note = semantics.attention_path(c, BACKEND, a["output_attentions"], a["head_mask"] is not None)
        if note:
            self._warn_once("sdpa_fallback", note)
        mask_dtype = tf.dtypes.as_dtype(semantics.mask_dtype(eager, self.compute_dtype))
        base = ids if ids is not None else embeds[..., 0]
        B, S = tf.shape(base)[0], tf.shape(base)[1]
        mask, unpadded = a["attention_mask"], None
        inputs = {"input_ids": ids, "token_type_ids": a["token_type_ids"], "position_ids": a["position_ids"],
                  "inputs_embeds": embeds}
        if mode == "unpad":  # every layer on the kept tokens (1, T, H); attention in blocks (bert_tf._varlen)
            unpadded = unpad(c, **inputs, attention_mask=mask, mask_dtype=mask_dtype)
            inputs, ext_mask = unpadded.inputs, unpadded.blocks
        elif mode == "segments":  # padded layout, attention confined to each sequence: (B, 1, S, S)
            ext_mask = segment_mask(c, mask, a["position_ids"], B, S, mask_dtype)
        else:
            mask = tf.ones([B, past_length + S], tf.int32) if mask is None else mask
            ext_mask = additive_mask(mask, S, past_length, c.is_decoder, mask_dtype)      # (B, 1, 1|S, K)
        enc_hidden, enc_mask = a["encoder_hidden_states"], None
        cross_cached = past is not None and len(past[0]) == 4
        if enc_hidden is not None or cross_cached:
            em = a["encoder_attention_mask"]
            if em is None:
                E = tf.shape(enc_hidden)[1] if enc_hidden is not None else tf.shape(past[0][2])[2]
                em = tf.ones([B, E], tf.int32)
            enc_mask = additive_mask(em, S, 0, False, mask_dtype)                           # (B, 1, 1, E)
            if enc_hidden is not None:
                enc_hidden = tf.cast(enc_hidden, self.compute_dtype)
        if mode == "unpad":  # one graph for the packed tokens (ModelBase._packed_program)
            flags = (use_cache, a["output_attentions"], a["output_hidden_states"], eager, training)
            enc = self._packed_program(inputs, ext_mask, self.head_mask_per_layer(a["head_mask"]), flags)
        else:
            x = self.embeddings(**inputs, past_length=past_length, training=training)
            x = poison(c, x, ids, a["token_type_ids"], a["position_ids"], a["attention_mask"])  # XLA only
            enc = self.encoder(x, attention_mask=ext_mask, head_mask=self.head_mask_per_layer(a["head_mask"]),
                               encoder_hidden_states=enc_hidden, encoder_attention_mask=enc_mask,
                               past_key_values=past, past_length=past_length, use_cache=use_cache,
                               output_attentions=a["output_attentions"],
                               output_hidden_states=a["output_hidden_states"], eager=eager, training=training)
        if mode:  # back to (B, S, H) with 0 at dropped tokens
            enc = restore(enc, unpadded, mask)
        pooled = self.pooler(enc["last_hidden_state"]) if self.pooler is not None else None
        return self._return(a["return_dict"], pooler_output=pooled, **enc)


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


class BertPreTrainingHeads(_Module):
    """The ``cls`` block: ``predictions`` (MLM) and/or ``seq_relationship`` (NSP, (B, H) -> (B, 2))."""

    def __init__(self, config, mlm: bool = True, nsp: bool = True, dtype=None, name="cls"):
        super().__init__(config, dtype, name)
        if mlm:
            self.predictions = BertLMPredictionHead(config, dtype, "predictions")
        if nsp:
            self.seq_relationship = Dense(config, config.hidden_size, 2, dtype=dtype, name="seq_relationship")
        self.built = True


BertHeads = BertPreTrainingHeads  # the name before the three backends agreed on HF's


class _HeadModel(BertPreTrainedModel):
    """Base of every head: owns ``bert`` (a BertModel without its own init) plus the head modules
    ``_build_head`` creates; checks labels in-graph; computes the loss when every label is given."""

    def _build_modules(self, dtype):
        self.bert = BertModel(self.config, add_pooling_layer=self.add_pooling_layer, dtype=dtype, _init=False)
        self._build_head(dtype)

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
        fields = self._forward(a, training)
        labels = self._labels(a)  # with their in-graph range checks
        if labels is not None:
            fields["loss"] = self.head_loss(fields, **labels)
        return self._return(a["return_dict"], **fields)

    def _word_embeddings(self):
        return tf.convert_to_tensor(self.bert.embeddings.word_embeddings.embeddings)


class BertForPreTraining(_HeadModel):
    """MLM logits (B, S, V) + NSP logits (B, 2); loss = MLM CE + NSP CE (both labels needed)."""
    model_class = "BertForPreTraining"

    def _build_head(self, dtype):
        self.cls = BertPreTrainingHeads(self.config, True, True, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"prediction_logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                "seq_relationship_logits": self.cls.seq_relationship(out["pooler_output"]),
                **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels, next_sentence_label):
        return (_ce(outputs["prediction_logits"], labels)
                + _ce(outputs["seq_relationship_logits"], next_sentence_label))


class BertLMHeadModel(_HeadModel):
    """Causal LM (needs ``config.is_decoder``): logits (B, S, V); loss = CE(logits[:, :-1], labels[:, 1:])."""
    model_class = "BertLMHeadModel"

    def _build_head(self, dtype):
        self.cls = BertPreTrainingHeads(self.config, True, False, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                "past_key_values": out.get("past_key_values"), "cross_attentions": out.get("cross_attentions"),
                **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels):
        return causal_lm_loss(outputs["logits"], labels)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 top_k=None, top_p=None, temperature: float = 1.0, seed: int = 0, eos_token_id=None,
                 pad_token_id=None, encoder_hidden_states=None, encoder_attention_mask=None):
        """Cached greedy/sampled decoding via ``bert_common.generation.generate``. (B, S) -> (B, S + n) int64.
        ``eos_token_id`` / ``pad_token_id`` default to the config's; encoder states go to every step.
        Runs two XLA programs with a fixed-size cache (``bert_tf._generate``); the growing cache (eager,
        ``ModelBase._generate``) for a few tokens or when the sequence would outgrow
        ``max_position_embeddings`` (it raises there)."""
        return self._generate(input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                              encoder_attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              top_k=top_k, top_p=top_p, temperature=temperature, seed=seed)


class BertForMaskedLM(_HeadModel):
    """MLM logits (B, S, V); loss = CE over labels != -100."""
    model_class = "BertForMaskedLM"

    def _build_head(self, dtype):
        self.cls = BertPreTrainingHeads(self.config, True, False, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.cls.predictions(out["last_hidden_state"], self._word_embeddings()),
                **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


class BertForNextSentencePrediction(_HeadModel):
    """NSP logits (B, 2) from the pooled output; loss = CE (``next_sentence_label``: HF's deprecated name)."""
    model_class = "BertForNextSentencePrediction"

    def _build_head(self, dtype):
        self.cls = BertPreTrainingHeads(self.config, False, True, dtype)

    def _forward(self, a, training):
        out = self._bert(a, training)
        return {"logits": self.cls.seq_relationship(out["pooler_output"]), **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


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
                **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels):
        return sequence_classification_loss(outputs["logits"], labels, self.config)


class BertForMultipleChoice(_HeadModel):
    """Inputs (B, C, S) are flattened to (B*C, S) (``semantics.choice_plan``); ``classifier`` scores each
    pooled choice: logits (B, C)."""
    model_class = "BertForMultipleChoice"

    def _build_head(self, dtype):
        self.dropout = keras.layers.Dropout(self.config.classifier_dropout_prob, dtype=dtype)
        self.classifier = Dense(self.config, self.config.hidden_size, 1, dtype=dtype, name="classifier")

    def _forward(self, a, training):
        shapes = {k: None if a.get(k) is None else a[k].shape.as_list() for k in semantics.CHOICE_RANKS}
        _, plan = semantics.choice_plan(shapes)
        lead = a["input_ids"] if a.get("input_ids") is not None else a["inputs_embeds"][..., 0]
        C = tf.shape(lead)[1]
        flat = {k: tf.reshape(a[k], tf.concat([[-1], tf.shape(a[k])[2:]], 0)) for k in plan}   # (B*C, S[, H])
        out = self._bert(a, training, **flat)
        logits = self.classifier(self.dropout(out["pooler_output"], training=training))       # (B*C, 1)
        return {"logits": tf.reshape(logits, [-1, C]), **self._encoder_outputs(out)}

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
                **self._encoder_outputs(out)}

    def head_loss(self, outputs, labels):
        return _ce(outputs["logits"], labels)


class BertForQuestionAnswering(_HeadModel):
    """``qa_outputs``: (B, S, H) -> start/end logits (B, S) each; needs ``config.num_labels == 2``.
    Loss: positions clamped to [0, S], index S ignored, (CE(start) + CE(end)) / 2."""
    model_class = "BertForQuestionAnswering"

    def _build_head(self, dtype):
        self.qa_outputs = Dense(self.config, self.config.hidden_size, 2, dtype=dtype, name="qa_outputs")

    def _forward(self, a, training):
        out = self._bert(a, training)
        logits = self.qa_outputs(out["last_hidden_state"])                                    # (B, S, 2)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1], **self._encoder_outputs(out)}

    def head_loss(self, outputs, start_positions, end_positions):
        return span_loss(outputs["start_logits"], outputs["end_logits"], start_positions, end_positions)


# == loading =================================================================================================
# from_pretrained / save_pretrained / canonical_state_dict live on BertPreTrainedModel (above); this is
# the name -> class table (bert_common.semantics order) the adapters and bert_common.auto use.
MODEL_CLASSES = semantics.class_table(
    (BertModel, BertForPreTraining, BertLMHeadModel, BertForMaskedLM, BertForNextSentencePrediction,
     BertForSequenceClassification, BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering))


def build(model_class: str, config: BertConfig, state: Mapping[str, np.ndarray] | None = None, seed: int = 0,
          add_pooling_layer: bool | None = None, dtype=None) -> BertPreTrainedModel:
    """A model of ``model_class`` from a canonical state dict (or fresh weights from ``seed``)."""
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class={model_class!r} is not one of {list(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[model_class]
    if state is None:
        return cls(config, add_pooling_layer=add_pooling_layer, seed=seed, dtype=dtype)
    model = cls(config, add_pooling_layer=add_pooling_layer, dtype=dtype, _init=False)
    full, report = match_state_dict(state, config, model_class, model.add_pooling_layer)
    model.load_canonical_state_dict(full)
    model.load_report = report
    return model
