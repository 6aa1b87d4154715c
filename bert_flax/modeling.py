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
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import checkify

from bert_common.config import BertConfig
from bert_common.generation import generate as _generate_loop
from bert_common.outputs import OUTPUT_CLASSES, OUTPUT_FIELDS, OUTPUT_OF, output_for
from bert_common.pretrained import canonical_from_backend, load_for_backend, save_from_backend
from bert_common.validation import check_inputs, input_limits, length_message, range_message
from bert_common.weights import HEADS, init_weights, match_state_dict, to_scheme

SCHEME = "flax"


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
# Integer inputs and the float inputs; everything else in ARRAY_INPUTS is a label (int or float).
_INT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "encoder_attention_mask")
_FLOAT_INPUTS = ("head_mask", "inputs_embeds", "encoder_hidden_states")

# How ``apply`` validates inputs it cannot see (tracers under a user's jit):
#   "callback": a host callback raises the DESIGN §6 ValueError; it surfaces as jax.errors.JaxRuntimeError
#               whose message contains that ValueError text (default; never a silent NaN).
#   "checkify": checkify.check with the same message; wrap the function in checkify.checkify and call
#               err.throw(), which raises checkify.JaxRuntimeError, a ValueError subclass.
#   "off":      no check (fastest); an out-of-range id then gathers NaN (jnp.take fill mode).
CHECK_MODES = ("callback", "checkify", "off")


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


def additive_mask(mask: jax.Array, query_length: int, causal: bool, dtype) -> jax.Array:
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


def _in_graph_checks(config: BertConfig, batch: Mapping[str, Any], mode: str) -> None:
    """Range checks on traced integer inputs (the concrete path uses ``check_inputs`` instead).

    Shapes are static under tracing, so the length and mask-shape checks of DESIGN §6 still run in Python.
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"check={mode!r} is not one of {list(CHECK_MODES)}")
    _check_shapes(config, batch)
    if mode == "off":
        return
    for arg, (limit, source) in input_limits(config).items():
        x = batch.get(arg)
        if x is None:
            continue
        bad = (x < 0) | (x >= limit)
        first = jnp.where(bad.any(), x.ravel()[jnp.argmax(bad.ravel())], 0)
        if mode == "checkify":
            checkify.check(~bad.any(), range_message(arg, "{value}", limit, source), value=first)
        else:
            def raise_on_host(any_bad, value, arg=arg, limit=limit, source=source):
                if bool(any_bad):
                    raise ValueError(range_message(arg, int(value), limit, source))
            jax.debug.callback(raise_on_host, bad.any(), first)


def _check_shapes(config: BertConfig, batch: Mapping[str, Any]) -> None:
    """The static half of DESIGN §6 (lengths, mask shapes), usable on tracers."""
    ids = batch.get("input_ids")
    base = tuple(ids.shape) if ids is not None else tuple(batch["inputs_embeds"].shape[:-1])
    past = past_length(batch.get("past_key_values"))
    if base[-1] + past > config.max_position_embeddings:
        raise ValueError(length_message("input_ids" if ids is not None else "inputs_embeds", base[-1], past,
                                        config.max_position_embeddings))
    mask = batch.get("attention_mask")
    if mask is not None and tuple(mask.shape) != base[:-1] + (past + base[-1],):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but must have shape "
                         f"{base[:-1] + (past + base[-1],)} (batch, past + seq)")


def past_length(past) -> int:
    """Number of cached positions: K of the first layer's self-attention keys (B, N, K, D), else 0."""
    return 0 if not past else int(past[0][0].shape[2])


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _register_outputs_as_pytrees() -> None:
    """Make the shared output classes pytrees, so ``jax.jit(lambda p: model(ids, params=p))`` can return
    the whole output object (children: the present fields in order; aux data: their names)."""
    for cls in OUTPUT_CLASSES.values():
        try:
            jax.tree_util.register_pytree_node(
                cls, lambda out: (tuple(out.values()), tuple(out.keys())),
                lambda keys, children, cls=cls: cls(**dict(zip(keys, children))))
        except ValueError:  # already registered (module reloaded)
            pass


_register_outputs_as_pytrees()


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

    Call: hidden (B, S, H), additive mask (B, 1, 1|S, K), head_mask (N,) float or None, kv_source (B, E, H)
    for cross-attention, past (k, v) each (B, N, K', D) or None.
    Returns context (B, S, H), probabilities (B, N, S, K) fp32, present (k, v) each (B, N, K, D).
    """
    config: BertConfig
    is_cross: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, mask, head_mask=None, kv_source=None, past=None):
        c = self.config
        N, D = c.num_attention_heads, c.head_dim
        B, S, _ = hidden.shape
        dense = functools.partial(_dense, c.hidden_size, config=c, dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(x):  # (B, T, H) -> (B, N, T, D)
            return x.reshape(x.shape[0], x.shape[1], N, D).transpose(0, 2, 1, 3)

        q = heads(dense("query")(hidden))                                         # (B, N, S, D)
        if self.is_cross and past is not None:
            k, v = past                                                           # computed on the first call
        elif self.is_cross:
            k, v = heads(dense("key")(kv_source)), heads(dense("value")(kv_source))  # (B, N, E, D)
        else:
            k, v = heads(dense("key")(hidden)), heads(dense("value")(hidden))     # (B, N, S, D)
            if past is not None:
                k = jnp.concatenate([past[0].astype(k.dtype), k], axis=2)         # (B, N, K, D)
                v = jnp.concatenate([past[1].astype(v.dtype), v], axis=2)
        scores = jnp.einsum("bnsd,bnkd->bnsk", q, k)                               # (B, N, S, K)
        if c.is_relative and not self.is_cross:
            K = k.shape[2]
            # distance = query position - key position; queries sit after the K - S cached keys.
            distance = (K - S + jnp.arange(S))[:, None] - jnp.arange(K)[None, :]  # (S, K)
            r = nn.Embed(2 * c.max_position_embeddings - 1, D, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=nn.initializers.normal(c.initializer_range),
                         name="distance_embedding")(distance + c.max_position_embeddings - 1)  # (S, K, D)
            scores = scores + jnp.einsum("bnsd,skd->bnsk", q, r)
            if c.position_embedding_type == "relative_key_query":
                scores = scores + jnp.einsum("bnkd,skd->bnsk", k, r)
        scores = scores / math.sqrt(D)
        # Softmax in fp32 whatever the compute dtype (DESIGN §5).
        probs = jax.nn.softmax(scores.astype(jnp.float32) + mask.astype(jnp.float32), axis=-1)
        probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=self.deterministic)
        if head_mask is not None:
            probs = probs * head_mask.astype(jnp.float32)[None, :, None, None]
        context = jnp.einsum("bnsk,bnkd->bnsd", probs.astype(self.dtype), v)      # (B, N, S, D)
        context = context.transpose(0, 2, 1, 3).reshape(B, S, N * D)               # (B, S, H)
        return context, probs, (k, v)


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
    is_cross: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, mask, head_mask=None, kv_source=None, past=None):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, deterministic=self.deterministic)
        context, probs, present = BertSelfAttention(is_cross=self.is_cross, name="self", **kw)(
            hidden, mask, head_mask, kv_source, past)
        return BertSelfOutput(name="output", **kw)(context, hidden), probs, present


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

    @nn.compact
    def __call__(self, hidden, mask, head_mask, encoder_hidden, encoder_mask, past):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype, deterministic=self.deterministic)
        self_past = None if past is None else past[:2]
        h, probs, present = BertAttention(name="attention", **kw)(hidden, mask, head_mask, None, self_past)
        cross_probs = None
        cross_past = None if past is None or len(past) < 4 else past[2:]
        if c.add_cross_attention and (encoder_hidden is not None or cross_past is not None):
            h, cross_probs, cross_present = BertAttention(is_cross=True, name="crossattention", **kw)(
                h, encoder_mask, head_mask, encoder_hidden, cross_past)
            present = present + cross_present
        inter = BertIntermediate(c, self.dtype, self.param_dtype, name="intermediate")(h)
        h = BertOutput(name="output", **kw)(inter, h)
        return h, probs, cross_probs, present


# ================================================================================================ encoder
class _LayerList(nn.Module):
    """The ``layer`` collection: layer i is the submodule named ``str(i)`` (params path layer/i/...)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden, mask, head_mask, encoder_hidden, encoder_mask, past):
        c = self.config
        # Gradient checkpointing: recompute each layer's activations in the backward pass (config switch).
        layer_cls = nn.remat(BertLayer) if c.gradient_checkpointing else BertLayer
        all_hidden, all_attn, all_cross, presents = [hidden], [], [], []
        for i in range(c.num_hidden_layers):
            hidden, probs, cross, present = layer_cls(c, self.dtype, self.param_dtype, self.deterministic, name=str(i))(
                hidden, mask, None if head_mask is None else head_mask[i], encoder_hidden, encoder_mask,
                None if past is None else tuple(past[i]))
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

    @nn.compact
    def __call__(self, hidden, mask, head_mask, encoder_hidden, encoder_mask, past):
        """-> (last hidden (B, S, H), all hidden states (L + 1 of them), self probs, cross probs, presents)."""
        return _LayerList(self.config, self.dtype, self.param_dtype, self.deterministic, name="layer")(
            hidden, mask, head_mask, encoder_hidden, encoder_mask, past)


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
def _nest(flat: Mapping[str, Any]) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}} (the scheme's "/"-joined paths to the params pytree)."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _flat(params: Mapping) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


def _as_head_mask(head_mask, config: BertConfig):
    """float (N,) -> the same mask for every layer (L, N); (L, N) as given. None stays None."""
    if head_mask is None:
        return None
    L, N = config.num_hidden_layers, config.num_attention_heads
    hm = jnp.asarray(head_mask)
    if hm.shape == (N,):
        return jnp.broadcast_to(hm, (L, N))
    if hm.shape == (L, N):
        return hm
    raise ValueError(f"head_mask has shape {tuple(hm.shape)}; it must be (num_attention_heads,) = ({N},) or "
                     f"(num_hidden_layers, num_attention_heads) = ({L}, {N})")


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

    @nn.compact
    def __call__(self, batch):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
        ids, embeds = batch.get("input_ids"), batch.get("inputs_embeds")
        B, S = ids.shape if ids is not None else embeds.shape[:2]
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
        if mask is None:
            mask = jnp.ones((B, P + S), jnp.int32)
        mask = additive_mask(mask, S, c.is_decoder, self.dtype)                        # (B, 1, 1|S, K)
        enc_hidden, enc_mask = batch.get("encoder_hidden_states"), None
        if c.add_cross_attention and (enc_hidden is not None or (past and len(past[0]) == 4)):
            enc_mask = batch.get("encoder_attention_mask")
            if enc_mask is None:
                E = enc_hidden.shape[1] if enc_hidden is not None else past[0][2].shape[2]
                enc_mask = jnp.ones((B, E), jnp.int32)
            enc_mask = additive_mask(enc_mask, 1, False, self.dtype)                   # (B, 1, 1, E)
            if enc_hidden is not None:
                enc_hidden = enc_hidden.astype(self.dtype)
        h, hiddens, attns, crosses, presents = BertEncoder(
            deterministic=self.deterministic, name="encoder", **kw)(
            h, mask, _as_head_mask(batch.get("head_mask"), c), enc_hidden, enc_mask, past)
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


class BertPreTrainedModel:
    """Shared glue of every public class: config, params pytree, jitted forward, validation, I/O.

    ``Cls(config, add_pooling_layer=None, seed=0, *, dtype=jnp.float32, param_dtype=jnp.float32,
    params=None)``: weights from ``bert_common.weights.init_weights(config, cls_name, seed)`` unless
    ``params`` (a pytree in the flax scheme) is given. ``dtype`` is the compute dtype, ``param_dtype`` the
    storage dtype of the parameters; ``compiler_options`` are passed to XLA when the forward is jitted.
    """
    model_class = "BertModel"
    module_class: type = BertModule
    check_mode = "callback"  # in-graph validation when ``__call__`` is itself traced by a user's jit
    label_names: tuple[str, ...] = ()  # the label keyword arguments this head takes

    def __init__(self, config: BertConfig, add_pooling_layer: bool | None = None, seed: int = 0, *,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, params: Mapping | None = None,
                 compiler_options: Mapping[str, Any] | None = None):
        if not isinstance(config, BertConfig):
            raise ValueError(f"config must be a bert_common.BertConfig, got {type(config).__name__}")
        self.config = config
        self.add_pooling_layer = HEADS[self.model_class].pooler if add_pooling_layer is None else add_pooling_layer
        self.dtype, self.param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self._check_config()
        self.module = self.module_class(config=config, dtype=self.dtype, param_dtype=self.param_dtype,
                                        add_pooling_layer=self.add_pooling_layer)
        if params is None:
            params = _nest(to_scheme(init_weights(config, self.model_class, seed, self.add_pooling_layer), SCHEME))
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.param_dtype), params)
        self.load_report = None
        self.trace_count = 0  # how many times the jitted forward was traced (compiled); tests read it
        # compiler_options go to XLA for the forward's jit, e.g. {"xla_backend_optimization_level": 0}
        # compiles several times faster on CPU (tests, debugging) at some run-time cost.
        self._jitted = jax.jit(self._traced_forward, static_argnames=("flags",),
                               compiler_options=dict(compiler_options) if compiler_options else None)
        # JAX accepts compiler_options only on a top-level jit; under jax.grad (traced params) this one runs.
        self._jitted_nested = jax.jit(self._traced_forward, static_argnames=("flags",))

    def _check_config(self) -> None:
        """Heads override to reject configs they cannot honour."""

    # ---------------------------------------------------------------- the pure function
    def apply(self, params, *, train: bool = False, dropout_rng=None, output_attentions: bool = False,
              output_hidden_states: bool = False, use_cache: bool | None = None, check: str = "callback",
              **inputs) -> dict:
        """Pure forward: params pytree + inputs (keyword, ``ARRAY_INPUTS``) -> dict of HF fields (arrays).

        Safe under ``jax.jit`` (flags static: ``static_argnames=("train", "output_attentions",
        "output_hidden_states", "use_cache", "check")``), ``jax.grad`` and sharding. Concrete inputs are
        validated with ``bert_common.validation.check_inputs``; traced ones per ``check`` (CHECK_MODES).
        """
        unknown = set(inputs) - set(ARRAY_INPUTS)
        if unknown:
            raise TypeError(f"{type(self).__name__}.apply got unexpected argument(s) {sorted(unknown)}")
        batch = {k: v for k, v in inputs.items() if v is not None}
        flags = self._flags(train, output_attentions, output_hidden_states, use_cache, "labels" in batch)
        if any(_is_traced(x) for x in jax.tree_util.tree_leaves(batch)):
            batch = self._prepare(batch, validate=False)
            _in_graph_checks(self.config, self._encoder_view(batch), check)
        else:
            batch = self._prepare(batch, validate=True)
        return self._forward(params, batch, dropout_rng, flags)

    def _flags(self, train, output_attentions, output_hidden_states, use_cache, has_labels=False) -> tuple:
        if use_cache is None:
            use_cache = self.config.use_cache if self.config.is_decoder else False
        # HF semantics: only a decoder caches (an encoder's bidirectional attention cannot be extended),
        # and a forward with labels (training the LM head) returns no cache.
        # A head whose output has no cache field (classification, QA, ...) never builds one.
        use_cache = (bool(use_cache) and self.config.is_decoder and not has_labels
                     and "past_key_values" in OUTPUT_FIELDS[OUTPUT_OF[self.model_class]])
        return bool(train), bool(output_attentions), bool(output_hidden_states), use_cache

    def _forward(self, params, batch, dropout_rng, flags) -> dict:
        train, output_attentions, output_hidden_states, use_cache = flags
        if train and dropout_rng is None and self._has_dropout():
            raise ValueError("train=True needs dropout_rng (a jax.random key); dropout uses an explicit rng")
        module = self.module.clone(deterministic=not train, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, use_cache=use_cache)
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        return module.apply({"params": params}, batch, rngs=rngs)

    def _has_dropout(self) -> bool:
        c = self.config
        return max(c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.classifier_dropout_prob) > 0

    def _traced_forward(self, params, batch, dropout_rng, flags):
        self.trace_count += 1  # Python side effect: runs once per compilation, never per call
        return self._forward(params, batch, dropout_rng, flags)

    # ---------------------------------------------------------------- inputs
    def _encoder_view(self, batch: dict) -> dict:
        """The batch as the encoder sees it (multiple choice flattens (B, C, S) -> (B*C, S))."""
        return batch

    def _prepare(self, batch: dict, validate: bool) -> dict:
        """NumPy/JAX inputs -> JAX arrays with fixed dtypes (int32 ids, float masks), validated when concrete."""
        if validate:
            view = self._encoder_view({k: np.asarray(v) if k != "past_key_values" else v for k, v in batch.items()})
            if view.get("inputs_embeds") is not None and view["inputs_embeds"].ndim != 3:
                raise ValueError(f"inputs_embeds must have shape (batch, seq, hidden), got "
                                 f"{tuple(view['inputs_embeds'].shape)}")
            check_inputs(self.config, input_ids=view.get("input_ids"), token_type_ids=view.get("token_type_ids"),
                         position_ids=view.get("position_ids"), attention_mask=view.get("attention_mask"),
                         inputs_embeds_shape=None if view.get("inputs_embeds") is None
                         else view["inputs_embeds"].shape,
                         past_length=past_length(view.get("past_key_values")),
                         encoder_hidden_shape=None if view.get("encoder_hidden_states") is None
                         else np.shape(view["encoder_hidden_states"]),
                         encoder_attention_mask=view.get("encoder_attention_mask"))
            ehs = view.get("encoder_hidden_states")
            if ehs is not None and (np.ndim(ehs) != 3 or np.shape(ehs)[-1] != self.config.hidden_size):
                raise ValueError(f"encoder_hidden_states has shape {tuple(np.shape(ehs))} but must be "
                                 f"(batch, encoder seq, config.hidden_size={self.config.hidden_size})")
        out = {}
        for k, v in batch.items():
            if k == "past_key_values":
                out[k] = tuple(tuple(jnp.asarray(t) for t in layer) for layer in v)
            elif k in _INT_INPUTS:
                out[k] = jnp.asarray(v, jnp.int32)
            elif k in _FLOAT_INPUTS:
                out[k] = jnp.asarray(v, jnp.float32)
            else:  # labels: ints stay int32, floats (regression, multi-label) float32
                a = v if _is_traced(v) else np.asarray(v)
                out[k] = jnp.asarray(a, jnp.int32 if jnp.issubdtype(a.dtype, jnp.integer) else jnp.float32)
        if validate and "head_mask" in out:
            _as_head_mask(out["head_mask"], self.config)
        return out

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
        c = self.config
        unknown = set(labels) - set(self.label_names)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {sorted(unknown)}; "
                            f"its labels are {list(self.label_names)}")
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                      encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                      past_key_values=past_key_values, **labels)
        batch = {k: v for k, v in inputs.items() if v is not None}
        flags = self._flags(train, c.output_attentions if output_attentions is None else output_attentions,
                            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
                            use_cache, "labels" in batch)
        params = self.params if params is None else params
        if any(_is_traced(x) for x in jax.tree_util.tree_leaves(batch)):
            # Called under a user's jit: validate in-graph, and let their jit compile the forward.
            batch = self._prepare(batch, validate=False)
            _in_graph_checks(c, self._encoder_view(batch), self.check_mode)
            out = self._forward(params, batch, dropout_rng, flags)
        else:
            batch = self._prepare(batch, validate=True)
            if flags[0] and dropout_rng is None and self._has_dropout():
                raise ValueError("train=True needs dropout_rng (a jax.random key); dropout uses an explicit rng")
            traced_params = any(_is_traced(x) for x in jax.tree_util.tree_leaves(params))
            forward = self._jitted_nested if traced_params else self._jitted
            out = forward(params, batch, dropout_rng, flags=flags)
        result = output_for(self.model_class, **out)
        return_dict = c.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def init_params_shapes(self, batch_size: int = 1, seq_length: int = 8):
        """``jax.eval_shape`` of the Linen init: the params tree structure and shapes, allocating nothing."""
        batch = {"input_ids": jax.ShapeDtypeStruct((batch_size, seq_length), jnp.int32)}
        if self.model_class == "BertForMultipleChoice":
            batch = {"input_ids": jax.ShapeDtypeStruct((batch_size, 2, seq_length), jnp.int32)}
        if self.config.add_cross_attention:
            batch["encoder_hidden_states"] = jax.ShapeDtypeStruct((batch_size, 3, self.config.hidden_size),
                                                                  jnp.float32)
        return jax.eval_shape(lambda b: self.module.init(jax.random.PRNGKey(0), b), batch)["params"]

    # ---------------------------------------------------------------- loading (see the loading banner)
    @classmethod
    def from_pretrained(cls, path, *, config: BertConfig | None = None, allow_new_head: bool = False,
                        add_pooling_layer: bool | None = None, dtype: Any = None, param_dtype: Any = None,
                        seed: int = 0, compiler_options: Mapping[str, Any] | None = None, **config_overrides):
        """Read ``path`` (config.json + weights in any supported format); inference-ready (train=False).

        ``dtype``: compute dtype (default float32); ``param_dtype``: storage dtype (default: ``dtype``).
        Head tensors missing from the checkpoint raise unless ``allow_new_head`` (then ``load_report``
        lists them). ``config_overrides`` change the config before weights are matched.
        """
        return _from_pretrained(cls, path, config=config, allow_new_head=allow_new_head,
                                add_pooling_layer=add_pooling_layer, dtype=dtype, param_dtype=param_dtype,
                                seed=seed, compiler_options=compiler_options, **config_overrides)

    def save_pretrained(self, path, shard_size=None) -> str:
        return _save_pretrained(self, path, shard_size)

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """{canonical name: np.ndarray} (HF PyTorch layout), e.g. query.weight as (out, in)."""
        return canonical_from_backend({k: np.asarray(v) for k, v in _flat(self.params).items()}, self.config,
                                      self.model_class, SCHEME, self.add_pooling_layer)

    def load_canonical_state_dict(self, state: Mapping[str, np.ndarray]):
        """Replace ``self.params`` from a canonical state dict (checked by ``match_state_dict``)."""
        full, report = match_state_dict(state, self.config, self.model_class, self.add_pooling_layer)
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.param_dtype),
                                             _nest(to_scheme(full, SCHEME)))
        return report

    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, dtype={self.dtype.name}, param_dtype={self.param_dtype.name})"


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


class BertClsHeads(nn.Module):
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


def _ce(logits, labels, ignore_index: int = -100):
    """Mean CE over labels != ignore_index (HF's CrossEntropyLoss). logits (..., C), labels (...) int.

    Every label ignored gives 0/0 = NaN, as in HF.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    keep = labels != ignore_index
    picked = jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return -(picked * keep).sum() / keep.sum()


def mse_loss(pred, target):
    return jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def bce_with_logits(logits, targets):
    """Mean binary CE on logits, in the stable form max(x, 0) - x*y + log(1 + exp(-|x|))."""
    x, y = logits.astype(jnp.float32), targets.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def causal_lm_loss(logits, labels):
    """Next-token CE: logits[:, :-1] (B, S-1, V) against labels[:, 1:] (B, S-1), ignoring -100."""
    return _ce(logits[:, :-1], labels[:, 1:])


def sequence_classification_loss(logits, labels, config: BertConfig):
    """HF's sequence-classification loss selection; the config is not mutated. logits (B, L)."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return mse_loss(logits.reshape(-1), labels.reshape(-1))
        return mse_loss(logits, labels)
    if problem == "single_label_classification":
        return _ce(logits.reshape(-1, config.num_labels), labels.reshape(-1).astype(jnp.int32))
    return bce_with_logits(logits, labels)


class _HeadModule(nn.Module):
    """Base of the head Linen modules: the ``bert`` encoder and the flags, shared."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    deterministic: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    use_cache: bool = False

    def encode(self, batch):
        """Run ``bert`` -> (encoder output dict, tied word-embedding table (V, H), passthrough fields)."""
        bert = BertModule(self.config, self.dtype, self.param_dtype, self.add_pooling_layer, self.deterministic,
                          self.output_attentions, self.output_hidden_states, self.use_cache, name="bert")
        out = bert(batch)
        table = None
        if self.config.tie_word_embeddings and "word_embeddings" in bert.variables["params"]["embeddings"]:
            table = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        passthrough = {k: out[k] for k in ("hidden_states", "attentions", "cross_attentions", "past_key_values")
                       if k in out}
        return out, table, passthrough

    def dropout(self, x):
        return nn.Dropout(self.config.classifier_dropout_prob)(x, deterministic=self.deterministic)


class BertForPreTrainingModule(_HeadModule):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        heads = BertClsHeads(self.config, True, True, self.dtype, self.param_dtype, name="cls")(
            out["last_hidden_state"], out["pooler_output"], table)
        res = {"prediction_logits": heads["mlm"], "seq_relationship_logits": heads["nsp"], **rest}
        if "labels" in batch and "next_sentence_label" in batch:
            res["loss"] = (_ce(heads["mlm"], batch["labels"])
                           + _ce(heads["nsp"], batch["next_sentence_label"]))
        return res


class BertLMHeadModelModule(_HeadModule):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertClsHeads(self.config, True, False, self.dtype, self.param_dtype, name="cls")(
            out["last_hidden_state"], None, table)["mlm"]                           # (B, S, V)
        res = {"logits": logits, **rest}
        if "labels" in batch:  # next-token prediction: position t predicts label t + 1
            res["loss"] = causal_lm_loss(logits, batch["labels"])
        return res


class BertForMaskedLMModule(_HeadModule):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertClsHeads(self.config, True, False, self.dtype, self.param_dtype, name="cls")(
            out["last_hidden_state"], None, table)["mlm"]
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits, batch["labels"])
        return res


class BertForNextSentencePredictionModule(_HeadModule):
    @nn.compact
    def __call__(self, batch):
        out, table, rest = self.encode(batch)
        logits = BertClsHeads(self.config, False, True, self.dtype, self.param_dtype, name="cls")(
            None, out["pooler_output"], None)["nsp"]                                # (B, 2)
        res = {"logits": logits, **rest}
        label = batch.get("labels", batch.get("next_sentence_label"))
        if label is not None:
            res["loss"] = _ce(logits, label)
        return res


class BertForSequenceClassificationModule(_HeadModule):
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


class BertForMultipleChoiceModule(_HeadModule):
    @nn.compact
    def __call__(self, batch):
        c = self.config
        lead = (batch["input_ids"] if "input_ids" in batch else batch["inputs_embeds"][..., 0]).shape[:2]  # (B, C)
        out, _, rest = self.encode(_flatten_choices(batch))
        logits = _dense(1, "classifier", c, self.dtype, self.param_dtype)(
            self.dropout(out["pooler_output"])).reshape(lead)                        # (B, C)
        res = {"logits": logits, **rest}
        if "labels" in batch:
            res["loss"] = _ce(logits, batch["labels"])
        return res


def _flatten_choices(batch: dict) -> dict:
    """(B, C, S[, H]) inputs -> (B*C, S[, H]); labels and head_mask untouched."""
    out = dict(batch)
    for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
        if k in out and out[k].ndim == 3:
            out[k] = out[k].reshape(-1, out[k].shape[-1])
    if "inputs_embeds" in out and out["inputs_embeds"].ndim == 4:
        e = out["inputs_embeds"]
        out["inputs_embeds"] = e.reshape(-1, e.shape[-2], e.shape[-1])
    return out


class BertForTokenClassificationModule(_HeadModule):
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


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """(CE(start) + CE(end)) / 2; positions (B,) clamped to [0, S] and S (outside the text) ignored."""
    S = start_logits.shape[1]
    sp = jnp.clip(start_positions.reshape(-1), 0, S)
    ep = jnp.clip(end_positions.reshape(-1), 0, S)
    return (_ce(start_logits, sp, ignore_index=S) + _ce(end_logits, ep, ignore_index=S)) / 2


class BertForQuestionAnsweringModule(_HeadModule):
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
    label_names = ("labels", "next_sentence_label")


class BertLMHeadModel(BertPreTrainedModel):
    """Causal LM: ``logits`` (B, S, V); loss on logits[:, :-1] vs labels[:, 1:]; ``generate``."""
    model_class = "BertLMHeadModel"
    module_class = BertLMHeadModelModule
    label_names = ("labels",)

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
                 top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, encoder_hidden_states=None,
                 encoder_attention_mask=None) -> np.ndarray:
        """Greedy or seeded top-k / top-p sampling with the cache. (B, S) int -> (B, S + n) int64.

        The loop and the sampling are ``bert_common.generation.generate`` (shared NumPy), so the same seed
        gives the same tokens in every backend. Each step feeds only the new token and the cache.
        """
        if not self.config.is_decoder:
            raise ValueError("generate needs config.is_decoder=True (a causal model); got is_decoder=False")
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
        if ids.shape[1] + max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(f"max_new_tokens={max_new_tokens} with input length {ids.shape[1]} exceeds "
                             f"config.max_position_embeddings={self.config.max_position_embeddings}")

        def step(feed, mask, past):
            out = self(feed, attention_mask=mask, past_key_values=past, use_cache=True,
                       encoder_hidden_states=encoder_hidden_states if past is None else None,
                       encoder_attention_mask=encoder_attention_mask)
            return np.asarray(out.logits[:, -1], np.float32), out.past_key_values

        # Defaults from the config, as in bert_torch: eos ends a row, which is then filled with pad.
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = pad_token_id if pad_token_id is not None else (self.config.pad_token_id or 0)
        return _generate_loop(step, ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              top_k=top_k, top_p=top_p, temperature=temperature, seed=seed,
                              eos_token_id=eos, pad_token_id=pad)


class BertForMaskedLM(BertPreTrainedModel):
    """MLM ``logits`` (B, S, V); loss = mean CE over labels != -100."""
    model_class = "BertForMaskedLM"
    module_class = BertForMaskedLMModule
    label_names = ("labels",)


class BertForNextSentencePrediction(BertPreTrainedModel):
    """NSP ``logits`` (B, 2) from the pooler; loss from ``labels`` (B,) in {0, 1}."""
    model_class = "BertForNextSentencePrediction"
    module_class = BertForNextSentencePredictionModule
    label_names = ("labels", "next_sentence_label")


class BertForSequenceClassification(BertPreTrainedModel):
    """``logits`` (B, L) from the pooler; loss per ``problem_type`` (regression / single / multi-label)."""
    model_class = "BertForSequenceClassification"
    module_class = BertForSequenceClassificationModule
    label_names = ("labels",)


class BertForMultipleChoice(BertPreTrainedModel):
    """Inputs (B, C, S); ``logits`` (B, C); loss = CE over choices."""
    model_class = "BertForMultipleChoice"
    module_class = BertForMultipleChoiceModule
    label_names = ("labels",)

    def _encoder_view(self, batch: dict) -> dict:
        ids = batch.get("input_ids")
        if ids is not None and np.ndim(ids) != 3:
            raise ValueError(f"input_ids must have shape (batch, num_choices, seq), got {tuple(np.shape(ids))}")
        view = dict(batch)
        for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
            if view.get(k) is not None and np.ndim(view[k]) == 3:
                view[k] = view[k].reshape(-1, np.shape(view[k])[-1])
        e = view.get("inputs_embeds")
        if e is not None and np.ndim(e) == 4:
            view["inputs_embeds"] = e.reshape(-1, np.shape(e)[-2], np.shape(e)[-1])
        return view


class BertForTokenClassification(BertPreTrainedModel):
    """``logits`` (B, S, L); loss = mean CE over labels != -100."""
    model_class = "BertForTokenClassification"
    module_class = BertForTokenClassificationModule
    label_names = ("labels",)


class BertForQuestionAnswering(BertPreTrainedModel):
    """``start_logits``, ``end_logits`` (B, S); loss = (CE(start) + CE(end)) / 2, positions clamped to S."""
    model_class = "BertForQuestionAnswering"
    module_class = BertForQuestionAnsweringModule
    label_names = ("start_positions", "end_positions")

    def _check_config(self) -> None:
        if self.config.num_labels != 2:
            raise ValueError(f"BertForQuestionAnswering needs config.num_labels=2 (start, end), got "
                             f"num_labels={self.config.num_labels}")


# ================================================================================================ loading
def _resolve_dtype(dtype, default=jnp.float32):
    return jnp.dtype(default if dtype is None else dtype)


def _from_pretrained(cls, path, *, config, allow_new_head, add_pooling_layer, dtype, param_dtype, seed,
                     compiler_options=None, **config_overrides):
    """Read ``path`` (config.json + weights in any supported format) through ``bert_common.pretrained``."""
    config, tensors, report = load_for_backend(path, cls.model_class, SCHEME, config=config,
                                               allow_new_head=allow_new_head, add_pooling_layer=add_pooling_layer,
                                               seed=seed, **config_overrides)
    compute = _resolve_dtype(dtype)
    model = cls(config, add_pooling_layer=add_pooling_layer, dtype=compute,
                param_dtype=_resolve_dtype(param_dtype, compute), params=_nest(tensors),
                compiler_options=compiler_options)
    model.load_report = report
    return model


def _save_pretrained(model: BertPreTrainedModel, path, shard_size=None) -> str:
    """Write ``config.json`` + ``model.safetensors`` (canonical layout) atomically; returns the directory."""
    tensors = {k: np.asarray(v) for k, v in _flat(model.params).items()}
    return save_from_backend(os.fspath(path), tensors, model.config, model.model_class, SCHEME,
                             model.add_pooling_layer, shard_size=shard_size)


MODEL_CLASSES: dict[str, type[BertPreTrainedModel]] = {
    cls.model_class: cls for cls in (BertModel, BertForPreTraining, BertLMHeadModel, BertForMaskedLM,
                                     BertForNextSentencePrediction, BertForSequenceClassification,
                                     BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering)}
assert set(MODEL_CLASSES) == set(HEADS), "every class of bert_common.weights.HEADS has a Flax model"


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
               param_dtype=_resolve_dtype(param_dtype, dtype), params=params, compiler_options=compiler_options)
