"""BERT in Flax (Linen): the encoder, its heads, losses, cached decoding and checkpoint glue.

Read top to bottom: helpers, embeddings, attention, layer, encoder, pooler, the model glue, the heads,
loading. Linen modules are stateless descriptions; the public classes (``BertModel`` ...) hold the
config, the parameter pytree ``model.params`` (nested dicts whose paths are exactly
``bert_common.weights.SCHEMES["flax"]``) and a ``jax.jit``-compiled forward cached per input shape.

Shape legend: B batch, S query length, K key length (past + S), E encoder length, H hidden, N heads,
D head dim, I intermediate, V vocab, L labels, C choices.

Three ways to run a model:
- ``model(input_ids, ...)``: NumPy or JAX inputs, validated on the host (DESIGN §6), then the jitted
  forward; ``params=`` takes a replacement pytree, so ``jax.grad(lambda p: model(..., params=p).loss)``
  works.
- ``model.apply(params, input_ids=..., ...)``: the pure function (a dict of arrays out) for a user's own
  ``jax.jit`` / ``jax.grad`` / sharding. Under tracing it checks inputs in-graph (see ``CHECK_MODES``).
- ``model.module``: the Linen module itself, ``model.module.apply({"params": p}, batch)``.

With ``config.attn_implementation="varlen"`` a call on concrete inputs runs unpadded (the plan is made on
the host, the encoder jitted on the packed tokens, compiled per bucketed plan shape, not per (B, S)); a
traced call keeps the padded layout with a segment mask. That tensor code lives in ``bert_flax._varlen``.

Every rule that is not a tensor operation comes from ``bert_common.semantics``; the wrapper's plumbing
(construction, flags and jit cache, ``apply``, the loading bodies) lives in ``bert_flax._base``, the pytree
helpers, input validation and conversion, and generate's fixed-size cache in ``bert_flax._jit``, the losses
in ``bert_flax._losses``.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.training import MLM_POSITIONS
from bert_common.weights import match_state_dict, to_scheme
from bert_flax import _varlen
from bert_flax._base import BACKEND, SCHEME, ModelBase, resolve_dtype  # noqa: F401
from bert_flax._losses import (_ce, bce_with_logits, causal_lm_loss, mse_loss,  # noqa: F401
                              sequence_classification_loss, span_loss)
from bert_flax._jit import (CHECK_MODES, _flat, _is_traced, _nest, checked, fixed_cache_step,  # noqa: F401
                            in_graph_checks, past_length)

IGNORE_INDEX = semantics.IGNORE_INDEX
_resolve_dtype = resolve_dtype  # the earlier private name


# ================================================================================================ helpers
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # x * Phi(x) with erf
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),    # tanh approximation (gelu_new)
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}

# Keyword arguments of the forward that are arrays (the batch), in HF's order; labels last.
ARRAY_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "encoder_hidden_states", "encoder_attention_mask", "past_key_values",
                "labels", "next_sentence_label", "start_positions", "end_positions")


def _dense(features: int, name: str, config: BertConfig, dtype, param_dtype, use_bias: bool = True) -> nn.Dense:
    """A Dense whose kernel is (in, out); the canonical weight is its transpose (weights.SCHEMES)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=nn.initializers.normal(config.initializer_range))


def layer_norm(config: BertConfig, param_dtype, x):
    """Apply a LayerNorm named ``LayerNorm`` inside the calling compact module. (..., H) -> (..., H)."""
    # A direct nn.LayerNorm keeps the parameter path .../LayerNorm/{scale,bias} (no extra nesting level).
    y = nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=param_dtype,
                     use_fast_variance=False, name="LayerNorm")(x.astype(jnp.float32))
    return y.astype(x.dtype)


def additive_mask(mask: jax.Array, query_length: int, causal: bool, dtype=jnp.float32) -> jax.Array:
    """(B, K) 1 = attend -> additive (B, 1, 1|S, K) in ``dtype``: 0 where kept, finfo(dtype).min elsewhere.

    With ``causal``, query i (absolute position K - S + i) sees keys 0..K - S + i. A fully masked row
    gets the same value everywhere and so averages the values (no NaN).
    """
    K = mask.shape[-1]
    m = mask.astype(dtype)[:, None, None, :]                                  # (B, 1, 1, K)
    if causal:
        past = K - query_length
        q_pos = past + jnp.arange(query_length)[:, None]                      # (S, 1)
        allowed = (jnp.arange(K)[None, :] <= q_pos).astype(dtype)             # (S, K)
        m = m * allowed[None, None]                                           # (B, 1, S, K)
    return (1.0 - m) * jnp.finfo(dtype).min


# ================================================================================================ embeddings
class BertEmbeddings(nn.Module):
    """word + token type (+ absolute position) embeddings, LayerNorm, dropout. (B, S) ids -> (B, S, H)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        c = self.config
        embed = functools.partial(nn.Embed, features=c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                  embedding_init=nn.initializers.normal(c.initializer_range))
        if inputs_embeds is None:
            inputs_embeds = embed(c.vocab_size, name="word_embeddings")(input_ids)      # (B, S, H)
            if c.pad_token_id is not None:
                # HF's padding_idx (bert_torch too): the pad row gets no gradient; the lookup is unchanged.
                is_pad = (input_ids == c.pad_token_id)[..., None]
                inputs_embeds = jnp.where(is_pad, jax.lax.stop_gradient(inputs_embeds), inputs_embeds)
        h = inputs_embeds.astype(self.dtype)
        h = h + embed(c.type_vocab_size, name="token_type_embeddings")(token_type_ids)
        if c.position_embedding_type == "absolute":
            h = h + embed(c.max_position_embeddings, name="position_embeddings")(position_ids)
        h = layer_norm(c, self.param_dtype, h)
        return nn.Dropout(c.hidden_dropout_prob)(h, deterministic=self.deterministic)


# ================================================================================================ attention
class BertSelfAttention(nn.Module):
    """Scaled dot-product attention with optional relative-position terms and a key/value cache.

    Call: hidden_states (B, S, H), additive attention_mask (B, 1, 1|S, K), head_mask (N,) float or None,
    encoder_hidden_states (B, E, H) for cross-attention, past_key_value (k, v) each (B, N, K', D) or None,
    eager (explicit probabilities) or the fused ``jax.nn.dot_product_attention``.
    Returns context (B, S, H), probabilities (B, N, S, K) fp32 or None when fused, present (k, v).
    varlen unpad: hidden_states (1, T, H) and ``_varlen.Blocks`` as the mask; attention runs per block.
    """
    config: BertConfig
    is_cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden_states, attention_mask, head_mask=None, encoder_hidden_states=None,
                 past_key_value=None, eager=True):
        c = self.config
        N, D = c.num_attention_heads, c.head_dim
        S = hidden_states.shape[1]
        dense = functools.partial(_dense, c.hidden_size, config=c, dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(x):  # (B, T, H) -> (B, N, T, D)
            return x.reshape(x.shape[0], x.shape[1], N, D).transpose(0, 2, 1, 3)

        q = heads(dense("query")(hidden_states))                                  # (B, N, S, D)
        if self.is_cross_attention and past_key_value is not None:
            k, v = past_key_value                                                 # computed on the first call
        elif self.is_cross_attention:
            k = heads(dense("key")(encoder_hidden_states))                        # (B, N, E, D)
            v = heads(dense("value")(encoder_hidden_states))
        else:
            k, v = heads(dense("key")(hidden_states)), heads(dense("value")(hidden_states))  # (B, N, S, D)
            if past_key_value is not None:
                k = jnp.concatenate([past_key_value[0].astype(k.dtype), k], axis=2)  # (B, N, K, D)
                v = jnp.concatenate([past_key_value[1].astype(v.dtype), v], axis=2)
        present, blocks = (k, v), attention_mask
        if isinstance(blocks, _varlen.Blocks):  # unpad: (1, N, T, D) -> one block per sequence (G, N, L, D)
            q, k, v = (_varlen.to_blocks(x, blocks) for x in (q, k, v))
            attention_mask = blocks.mask
        relative = None
        if c.is_relative and not self.is_cross_attention:
            M = c.max_position_embeddings
            if isinstance(blocks, _varlen.Blocks):
                index = blocks.relative                                           # ([G,] L, L)
            else:  # queries sit after the K - S cached keys. Clipped: a packed varlen row may be longer
                K = k.shape[2]  # than M (its cross-sequence pairs are masked but must index a real row)
                index = jnp.clip(semantics.relative_distance_index(jnp.arange, S, K, K - S, M), 0, 2 * M - 2)
            r = nn.Embed(2 * M - 1, D, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=nn.initializers.normal(c.initializer_range),
                         name="distance_embedding")(index)                        # ([G,] S, K, D)
            rel = "skd->bnsk" if index.ndim == 2 else "bskd->bnsk"
            relative = jnp.einsum("bnsd," + rel, q, r)
            if c.position_embedding_type == "relative_key_query":
                relative = relative + jnp.einsum("bnkd," + rel, k, r)
        probs = None
        if eager:
            scores = jnp.einsum("bnsd,bnkd->bnsk", q, k)                           # (B, N, S, K)
            if relative is not None:
                scores = scores + relative
            scores = scores / math.sqrt(D)
            # Softmax in fp32 whatever the compute dtype (DESIGN §5).
            probs = jax.nn.softmax(scores.astype(jnp.float32) + attention_mask.astype(jnp.float32), axis=-1)
            probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=self.deterministic)
            if head_mask is not None:
                probs = probs * head_mask.astype(jnp.float32)[None, :, None, None]
            context = jnp.einsum("bnsk,bnkd->bnsd", probs.astype(self.dtype), v)  # (B, N, S, D)
        else:  # the fused kernel; relative scores join the additive bias, scaled like q·k
            bias = attention_mask if relative is None else attention_mask + relative / math.sqrt(D)
            context = jax.nn.dot_product_attention(
                q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                bias=bias.astype(q.dtype), scale=1.0 / math.sqrt(D)).transpose(0, 2, 1, 3)  # (B, N, S, D)
        context = context.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], N * D)  # (B, S, H)
        if isinstance(blocks, _varlen.Blocks):
            context = _varlen.from_blocks(context, blocks)                         # (G, L, H) -> (1, T, H)
        return context, probs, present


class BertSelfOutput(nn.Module):
    """dense, dropout, LayerNorm(h + residual). (B, S, H) -> (B, S, H)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, residual):
        c = self.config
        h = _dense(c.hidden_size, "dense", c, self.dtype, self.param_dtype)(hidden)
        h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=self.deterministic)
        return layer_norm(c, self.param_dtype, h + residual)


class BertAttention(nn.Module):
    """``self`` attention + ``output`` projection; returns (B, S, H), probs (B, N, S, K), present (k, v)."""
    config: BertConfig
    is_cross_attention: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden_states, attention_mask, head_mask=None, encoder_hidden_states=None,
                 past_key_value=None, eager=True):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, deterministic=self.deterministic)
        context, probs, present = BertSelfAttention(is_cross_attention=self.is_cross_attention, name="self", **kw)(
            hidden_states, attention_mask, head_mask, encoder_hidden_states, past_key_value, eager)
        return BertSelfOutput(name="output", **kw)(context, hidden_states), probs, present


# ================================================================================================ layer
class BertIntermediate(nn.Module):
    """dense to I, activation. (B, S, H) -> (B, S, I)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        c = self.config
        h = _dense(c.intermediate_size, "dense", c, self.dtype, self.param_dtype)(hidden)          # (B, S, I)
        return ACTIVATIONS[c.gelu_variant](h)


class BertOutput(nn.Module):
    """dense back to H, dropout, LayerNorm(h + attention output). (B, S, I) -> (B, S, H)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, residual):
        c = self.config
        h = _dense(c.hidden_size, "dense", c, self.dtype, self.param_dtype)(hidden)
        h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=self.deterministic)
        return layer_norm(c, self.param_dtype, h + residual)


class BertLayer(nn.Module):
    """Self-attention, cross-attention (decoder with encoder states or cached cross keys), feed-forward.

    Returns (hidden (B, S, H), self probs (B, N, S, K), cross probs (B, N, S, E) or None, present cache
    tuple (self_k, self_v[, cross_k, cross_v])).
    """
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    eager: bool = True

    @nn.compact
    def __call__(self, hidden_states, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask,
                 past_key_value):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype, deterministic=self.deterministic)
        self_past = None if past_key_value is None else past_key_value[:2]
        h, probs, present = BertAttention(name="attention", **kw)(hidden_states, attention_mask, head_mask, None,
                                                                 self_past, self.eager)
        cross_probs = None
        cross_past = None if past_key_value is None or len(past_key_value) < 4 else past_key_value[2:]
        if c.add_cross_attention and (encoder_hidden_states is not None or cross_past is not None):
            h, cross_probs, cross_present = BertAttention(is_cross_attention=True, name="crossattention", **kw)(
                h, encoder_attention_mask, head_mask, encoder_hidden_states, cross_past, self.eager)
            present = present + cross_present
        # Feed-forward one ``semantics.feed_forward_chunks`` slice at a time (shared parameters).
        intermediate = BertIntermediate(c, self.dtype, self.param_dtype, name="intermediate")
        output = BertOutput(name="output", **kw)
        parts = [output(intermediate(h[:, a:b]), h[:, a:b]) for a, b in semantics.feed_forward_chunks(c, h.shape[1])]
        h = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        return h, probs, cross_probs, present


# ================================================================================================ encoder
class _LayerList(nn.Module):
    """The ``layer`` collection: layer i is the submodule named ``str(i)`` (params path layer/i/...)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True
    eager: bool = True

    @nn.compact
    def __call__(self, hidden_states, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask,
                 past_key_values):
        c = self.config
        # Gradient checkpointing: recompute each layer's activations in the backward pass (config switch).
        layer_cls = nn.remat(BertLayer) if c.gradient_checkpointing else BertLayer
        hidden = hidden_states
        all_hidden, all_attn, all_cross, presents = [hidden], [], [], []
        for i in range(c.num_hidden_layers):
            hidden, probs, cross, present = layer_cls(c, self.dtype, self.param_dtype, self.deterministic,
                                                      self.eager, name=str(i))(
                hidden, attention_mask, None if head_mask is None else head_mask[i], encoder_hidden_states,
                encoder_attention_mask, None if past_key_values is None else tuple(past_key_values[i]))
            all_hidden.append(hidden)
            all_attn.append(probs)
            all_cross.append(cross)
            presents.append(present)
        return hidden, tuple(all_hidden), tuple(all_attn), tuple(all_cross), tuple(presents)


class BertEncoder(nn.Module):
    """The stack of ``config.num_hidden_layers`` BertLayers under ``encoder/layer/{i}``."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True
    eager: bool = True

    @nn.compact
    def __call__(self, hidden_states, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask,
                 past_key_values):
        """-> (last hidden (B, S, H), all hidden states (L + 1 of them), self probs, cross probs, presents)."""
        return _LayerList(self.config, self.dtype, self.param_dtype, self.deterministic, self.eager, name="layer")(
            hidden_states, attention_mask, head_mask, encoder_hidden_states, encoder_attention_mask, past_key_values)


# ================================================================================================ pooler
class BertPooler(nn.Module):
    """tanh(dense(h[:, 0])). (B, S, H) -> (B, H)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        c = self.config
        return jnp.tanh(_dense(c.hidden_size, "dense", c, self.dtype, self.param_dtype)(hidden[:, 0]))


# ================================================================================================ model
def head_mask_per_layer(head_mask, config: BertConfig):
    """float (N,) -> the same mask for every layer (L, N); (L, N) as given. None stays None."""
    if head_mask is None:
        return None
    hm = jnp.asarray(head_mask)
    if semantics.head_mask_kind(config, hm.shape) == "shared":
        return jnp.broadcast_to(hm, (config.num_hidden_layers, config.num_attention_heads))
    return hm


class BertModule(nn.Module):
    """The Linen BERT: embeddings, encoder, optional pooler. ``__call__(batch)`` -> dict of HF fields.

    ``batch`` holds the array inputs of ``ARRAY_INPUTS`` (absent or None = not given). Flags are
    attributes so that ``nn.remat`` sees arrays only.
    """
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    deterministic: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    use_cache: bool = False
    eager: bool = True

    @nn.compact
    def __call__(self, batch):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
        ids, embeds = batch.get("input_ids"), batch.get("inputs_embeds")
        B, S = ids.shape if ids is not None else embeds.shape[:2]
        if _varlen.ENCODED in batch:  # varlen unpad, second half: the encoder ran on packed tokens
            out = _varlen.scatter_outputs(batch[_varlen.ENCODED], B, S)
            if self.add_pooling_layer:
                out["pooler_output"] = BertPooler(name="pooler", **kw)(out["last_hidden_state"])
            return out
        past = batch.get("past_key_values")
        P = past_length(past)
        position_ids = batch.get("position_ids")
        if position_ids is None:
            position_ids = jnp.broadcast_to(P + jnp.arange(S), (B, S))
        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, S), jnp.int32)
        h = BertEmbeddings(deterministic=self.deterministic, name="embeddings", **kw)(
            ids, token_type_ids, position_ids, embeds)                                 # (B, S, H)
        mask = batch.get("attention_mask")
        mask_dtype = jnp.dtype(semantics.mask_dtype(self.eager, jnp.dtype(self.dtype).name))
        if _varlen.PLAN in batch:  # varlen unpad: (1, T) packed tokens, attention within the plan's blocks
            mask = _varlen.blocks(batch[_varlen.PLAN], mask_dtype)
        elif c.attn_implementation == "varlen":  # varlen segments: padded layout, attention per sequence
            mask = _varlen.segment_mask(mask, batch.get("position_ids"), (B, S), c.is_decoder, mask_dtype)
        else:
            mask = additive_mask(jnp.ones((B, P + S), jnp.int32) if mask is None else mask, S, c.is_decoder,
                                 mask_dtype)                                           # (B, 1, 1|S, K)
        enc_hidden, enc_mask = batch.get("encoder_hidden_states"), None
        if c.add_cross_attention and (enc_hidden is not None or (past and len(past[0]) == 4)):
            enc_mask = batch.get("encoder_attention_mask")
            if enc_mask is None:
                E = enc_hidden.shape[1] if enc_hidden is not None else past[0][2].shape[2]
                enc_mask = jnp.ones((B, E), jnp.int32)
            enc_mask = additive_mask(enc_mask, 1, False, mask_dtype)                   # (B, 1, 1, E)
            if enc_hidden is not None:
                enc_hidden = enc_hidden.astype(self.dtype)
        h, hiddens, attns, crosses, presents = BertEncoder(
            deterministic=self.deterministic, eager=self.eager, name="encoder", **kw)(
            h, mask, head_mask_per_layer(batch.get("head_mask"), c), enc_hidden, enc_mask, past)
        out = {"last_hidden_state": h}
        if self.add_pooling_layer:
            out["pooler_output"] = BertPooler(name="pooler", **kw)(h)
        if self.output_hidden_states:
            out["hidden_states"] = hiddens
        if self.output_attentions:
            out["attentions"] = attns
            if c.add_cross_attention and crosses[0] is not None:
                out["cross_attentions"] = crosses
        if self.use_cache:
            out["past_key_values"] = presents
        return out


class BertPreTrainedModel(ModelBase):
    """Shared glue of every public class: config, params pytree, jitted forward, validation, I/O.

    ``Cls(config, add_pooling_layer=None, seed=0, *, dtype=jnp.float32, param_dtype=jnp.float32,
    params=None)``: weights from ``bert_common.weights.init_weights(config, cls_name, seed)`` unless
    ``params`` (a pytree in the flax scheme) is given. ``dtype`` is the compute dtype, ``param_dtype`` the
    storage dtype of the parameters; ``compiler_options`` are passed to XLA when the forward is jitted.
    The plumbing (construction, jit cache, flags, warnings, output packing, ``apply``, ``init_params_shapes``,
    the bodies of the loading methods) is ``bert_flax._base.ModelBase``.
    """
    model_class = "BertModel"
    module_class: type = BertModule
    check_mode = "callback"  # in-graph validation when ``__call__`` is itself traced by a user's jit

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int = 0, *,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, params: Mapping | None = None,
                 compiler_options: Mapping[str, Any] | None = None):
        if not isinstance(config, BertConfig):
            raise ValueError(f"config must be a bert_common.BertConfig, got {type(config).__name__}")
        semantics.check_head_config(self.model_class, config)
        self.config = config
        self.load_report = None
        self._warned: set[str] = set()
        # module_class with params (given, or from seed); varlen's packed encoder is the bare BertModule
        self._finish(seed, add_pooling_layer, dtype, param_dtype, params, compiler_options, BertModule)

    # ---------------------------------------------------------------- the call
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                 use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, *,
                 params=None, train: bool = False, dropout_rng=None, **labels):
        """HF keyword arguments -> the HF output object (or a tuple with ``return_dict=False``).

        Inputs are NumPy or JAX arrays: ids (B, S) int (or (B, C, S) for multiple choice), masks (B, K),
        ``inputs_embeds`` (B, S, H) float, ``head_mask`` (N,) or (L, N) float. The forward is jitted and
        compiled once per input shape and flag combination.
        """
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                      encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                      past_key_values=past_key_values, use_cache=use_cache, **labels)
        return self._call(params, semantics.check_call_args(self.model_class, inputs), train, dropout_rng, use_cache,
                          output_attentions, output_hidden_states, return_dict)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path, *, config: BertConfig | None = None, allow_new_head: bool = False,
                        add_pooling_layer: bool | None = None, dtype: Any = None, param_dtype: Any = None,
                        seed: int = 0, compiler_options: Mapping[str, Any] | None = None, **config_overrides):
        """Read ``path`` (config.json + weights in any supported format); inference-ready (train=False).

        ``dtype``: compute dtype (default float32); ``param_dtype``: storage dtype (default: ``dtype``).
        Head tensors missing from the checkpoint raise unless ``allow_new_head`` (then ``load_report``
        lists them). ``config_overrides`` change the config before weights are matched.
        """
        return cls._from_pretrained(path, config, allow_new_head, add_pooling_layer, dtype, param_dtype, seed,
                                    compiler_options, config_overrides)

    def save_pretrained(self, path, shard_size=None) -> str:
        """Write ``config.json`` + ``model.safetensors`` (canonical layout) atomically; returns the directory."""
        return self._save_pretrained(path, shard_size)

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """{canonical name: np.ndarray} (HF PyTorch layout), e.g. query.weight as (out, in)."""
        return self._canonical_state_dict()

    def load_canonical_state_dict(self, state: Mapping[str, np.ndarray]):
        """Replace ``self.params`` from a canonical state dict (checked by ``match_state_dict``)."""
        return self._load_canonical_state_dict(state)


class BertModel(BertPreTrainedModel):
    """The bare encoder: ``last_hidden_state`` (B, S, H), ``pooler_output`` (B, H) when pooled."""
    model_class = "BertModel"
    module_class = BertModule


# ================================================================================================ heads
class BertPredictionHeadTransform(nn.Module):
    """dense, activation (config.hidden_act), LayerNorm. (B, S, H) -> (B, S, H)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        c = self.config
        h = ACTIVATIONS[c.gelu_variant](_dense(c.hidden_size, "dense", c, self.dtype, self.param_dtype)(hidden))
        return layer_norm(c, self.param_dtype, h)


class BertLMPredictionHead(nn.Module):
    """transform, then ``@ W_emb^T`` (tied) or ``decoder`` (untied), + ``bias``. (B, S, H) -> (B, S, V)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, word_embeddings):
        c = self.config
        h = BertPredictionHeadTransform(c, self.dtype, self.param_dtype, name="transform")(hidden)
        if c.tie_word_embeddings:
            logits = h @ word_embeddings.astype(self.dtype).T                    # (B, S, V)
        else:
            logits = _dense(c.vocab_size, "decoder", c, self.dtype, self.param_dtype, use_bias=False)(h)
        bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), self.param_dtype)
        return logits + bias.astype(self.dtype)


class BertPreTrainingHeads(nn.Module):
    """The ``cls`` block: ``predictions`` (MLM) and/or ``seq_relationship`` (NSP)."""
    config: BertConfig
    mlm: bool = True
    nsp: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sequence, pooled, word_embeddings):
        out = {}
        if self.mlm:
            out["mlm"] = BertLMPredictionHead(self.config, self.dtype, self.param_dtype, name="predictions")(
                sequence, word_embeddings)                                        # (B, S, V)
        if self.nsp:
            out["nsp"] = _dense(2, "seq_relationship", self.config, self.dtype, self.param_dtype)(pooled)  # (B, 2)
        return out


BertClsHeads = BertPreTrainingHeads  # the name before the three backends agreed on HF's


def _mlm_states(out, batch):
    """The MLM head's input: last_hidden_state (B, S, H), or (B, P, H) at ``batch[MLM_POSITIONS]`` (B, P)
    int, which only the trainer's sparse MLM step passes (``bert_common.training.SPARSE_MLM``)."""
    h, where = out["last_hidden_state"], batch.get(MLM_POSITIONS)
    return h if where is None else jnp.take_along_axis(h, where[..., None], axis=1)


class _HeadModel(nn.Module):
    """Base of the head Linen modules: the ``bert`` encoder and the flags, shared."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    deterministic: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    use_cache: bool = False
    eager: bool = True

    def encode(self, batch):
        """Run ``bert`` -> (encoder output dict, tied word-embedding table (V, H), passthrough fields)."""
        bert = BertModule(self.config, self.dtype, self.param_dtype, self.add_pooling_layer, self.deterministic,
                          self.output_attentions, self.output_hidden_states, self.use_cache, self.eager,
                          name="bert")
        out = bert(batch)
        table = None
        if self.config.tie_word_embeddings and "word_embeddings" in bert.variables["params"]["embeddings"]:
            table = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        passthrough = {k: out[k] for k in ("hidden_states", "attentions", "cross_attentions", "past_key_values")
                       if k in out}
        return out, table, passthrough

    def dropout(self, x):
        return nn.Dropout(self.config.classifier_dropout_prob)(x, deterministic=self.deterministic)


class BertForPreTrainingModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        heads = BertPreTrainingHeads(self.config, True, True, self.dtype, self.param_dtype, name="cls")(
            _mlm_states(out, batch), out["pooler_output"], table)
        res = {"prediction_logits": heads["mlm"], "seq_relationship_logits": heads["nsp"], **rest}
        if "labels" in batch and "next_sentence_label" in batch:
            res["loss"] = (_ce(heads["mlm"], batch["labels"])
                           + _ce(heads["nsp"], batch["next_sentence_label"]))
        return res


class BertLMHeadModelModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertPreTrainingHeads(self.config, True, False, self.dtype, self.param_dtype, name="cls")(
            out["last_hidden_state"], None, table)["mlm"]                           # (B, S, V)
        res = {"logits": logits, **rest}
        if "labels" in batch:  # next-token prediction: position t predicts label t + 1
            res["loss"] = causal_lm_loss(logits, batch["labels"])
        return res


class BertForMaskedLMModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertPreTrainingHeads(self.config, True, False, self.dtype, self.param_dtype, name="cls")(
            _mlm_states(out, batch), None, table)["mlm"]
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits, batch["labels"])
        return res


class BertForNextSentencePredictionModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertPreTrainingHeads(self.config, False, True, self.dtype, self.param_dtype, name="cls")(
            None, out["pooler_output"], None)["nsp"]                                # (B, 2)
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits, batch["labels"])
        return res


class BertForSequenceClassificationModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, _, rest = self.encode(batch)
        c = self.config
        logits = _dense(c.num_labels, "classifier", c, self.dtype, self.param_dtype)(
            self.dropout(out["pooler_output"]))                                      # (B, L)
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = sequence_classification_loss(logits, batch["labels"], c)
        return res


class BertForMultipleChoiceModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        c = self.config
        lead = (batch["input_ids"] if "input_ids" in batch else batch["inputs_embeds"][..., 0]).shape[:2]  # (B, C)
        _, plan = semantics.choice_plan({k: None if k not in batch else batch[k].shape
                                         for k in semantics.CHOICE_RANKS})
        out, _, rest = self.encode({**batch, **{k: batch[k].reshape(plan[k]) for k in plan}})
        logits = _dense(1, "classifier", c, self.dtype, self.param_dtype)(
            self.dropout(out["pooler_output"])).reshape(lead)                        # (B, C)
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits, batch["labels"])
        return res


class BertForTokenClassificationModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, _, rest = self.encode(batch)
        c = self.config
        logits = _dense(c.num_labels, "classifier", c, self.dtype, self.param_dtype)(
            self.dropout(out["last_hidden_state"]))                                  # (B, S, L)
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits.reshape(-1, c.num_labels), batch["labels"].reshape(-1))
        return res


class BertForQuestionAnsweringModule(_HeadModel):
    @nn.compact
    def __call__(self, batch):
        out, _, rest = self.encode(batch)
        c = self.config
        logits = _dense(c.num_labels, "qa_outputs", c, self.dtype, self.param_dtype)(out["last_hidden_state"])
        start, end = logits[..., 0], logits[..., 1]                                  # (B, S) each
        res = {"start_logits": start, "end_logits": end, **rest}
        if "start_positions" in batch and "end_positions" in batch:
            res["loss"] = span_loss(start, end, batch["start_positions"], batch["end_positions"])
        return res


class BertForPreTraining(BertPreTrainedModel):
    """MLM ``prediction_logits`` (B, S, V) + NSP ``seq_relationship_logits`` (B, 2); loss needs
    ``labels`` and ``next_sentence_label``."""
    model_class = "BertForPreTraining"
    module_class = BertForPreTrainingModule


class BertLMHeadModel(BertPreTrainedModel):
    """Causal LM: ``logits`` (B, S, V); loss on logits[:, :-1] vs labels[:, 1:]; ``generate``."""
    model_class = "BertLMHeadModel"
    module_class = BertLMHeadModelModule

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, encoder_hidden_states=None,
                 encoder_attention_mask=None) -> np.ndarray:
        """Greedy or seeded top-k / top-p sampling with the cache. (B, S) int -> (B, S + n) int64.

        The loop and the sampling are ``bert_common.generation.generate`` (shared NumPy), so the same seed
        gives the same tokens in every backend. Each step feeds the new token, the cache and the encoder
        states (their keys/values are computed on the first step and reused from the cache). The cache has
        a fixed size (``_jit.fixed_cache_step``): the prompt compiles once, every later step once.
        """
        return self._generate(input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                              encoder_attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              top_k=top_k, top_p=top_p, temperature=temperature, seed=seed)


class BertForMaskedLM(BertPreTrainedModel):
    """MLM ``logits`` (B, S, V); loss = mean CE over labels != -100."""
    model_class = "BertForMaskedLM"
    module_class = BertForMaskedLMModule


class BertForNextSentencePrediction(BertPreTrainedModel):
    """NSP ``logits`` (B, 2) from the pooler; loss from ``labels`` (B,) in {0, 1}."""
    model_class = "BertForNextSentencePrediction"
    module_class = BertForNextSentencePredictionModule


class BertForSequenceClassification(BertPreTrainedModel):
    """``logits`` (B, L) from the pooler; loss per ``problem_type`` (regression / single / multi-label)."""
    model_class = "BertForSequenceClassification"
    module_class = BertForSequenceClassificationModule


class BertForMultipleChoice(BertPreTrainedModel):
    """Inputs (B, C, S); ``logits`` (B, C); loss = CE over choices."""
    model_class = "BertForMultipleChoice"
    module_class = BertForMultipleChoiceModule


class BertForTokenClassification(BertPreTrainedModel):
    """``logits`` (B, S, L); loss = mean CE over labels != -100."""
    model_class = "BertForTokenClassification"
    module_class = BertForTokenClassificationModule


class BertForQuestionAnswering(BertPreTrainedModel):
    """``start_logits``, ``end_logits`` (B, S); loss = (CE(start) + CE(end)) / 2, positions clamped to S."""
    model_class = "BertForQuestionAnswering"
    module_class = BertForQuestionAnsweringModule


# ================================================================================================ loading
# from_pretrained / save_pretrained / canonical_state_dict live on BertPreTrainedModel (above); this is
# the name -> class table (bert_common.semantics order) the adapters and bert_common.auto use.
MODEL_CLASSES: dict[str, type[BertPreTrainedModel]] = semantics.class_table(
    (BertModel, BertForPreTraining, BertLMHeadModel, BertForMaskedLM, BertForNextSentencePrediction,
     BertForSequenceClassification, BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering))


def build(model_class: str, config: BertConfig, state: Mapping[str, np.ndarray] | None = None, seed: int = 0,
          add_pooling_layer: bool | None = None, dtype: Any = jnp.float32, param_dtype: Any = None,
          compiler_options: Mapping[str, Any] | None = None) -> BertPreTrainedModel:
    """A model of ``model_class`` from a canonical state dict (or fresh weights from ``seed``)."""
    if model_class not in MODEL_CLASSES:
        raise ValueError(f"model_class={model_class!r} is not one of {list(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[model_class]
    params = None
    if state is not None:
        full, _ = match_state_dict(state, config, model_class, add_pooling_layer)
        params = _nest(to_scheme(full, SCHEME))
    return cls(config, add_pooling_layer=add_pooling_layer, seed=seed, dtype=dtype,
               param_dtype=resolve_dtype(param_dtype, dtype), params=params, compiler_options=compiler_options)
