"""Unpadded ("varlen") execution in Flax: the tensor half of ``bert_common.varlen`` (whose docstring is
the rule), kept out of ``modeling.py``, which only dispatches here.

unpad (concrete inputs, no attention probabilities requested): :class:`Unpadded` makes the plan on the
host with bucketed sizes (:data:`BUCKETS`), packs the inputs to (1, T) and runs the encoder jitted on them
-- that compile cache is keyed on the plan shape (T, G, L) and the flags, never on (B, S). The model's own
jitted forward then gets the packed outputs under :data:`ENCODED`: ``BertModule`` scatters them back to
(B, S, ...) and the pooler and the head run on the padded layout as in the padded path (that small half
compiles per (B, S)). Inside the encoder, attention gathers each sequence into its block
(:func:`to_blocks`), attends with the block mask of :class:`Blocks`, and returns (:func:`from_blocks`).

segments (traced inputs, or output_attentions): :func:`segment_mask` is the padded additive mask with
attention confined to each sequence, built in-graph.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bert_common import varlen
from bert_common.config import BertConfig
from bert_flax._jit import encoder_view

# Batch keys: PLAN holds the host-made block arrays of a packed (1, T) batch (stage 1, the encoder);
# ENCODED holds the encoder's packed outputs and ``token_index`` (stage 2, scatter + pooler + head).
PLAN, ENCODED = "varlen_plan", "varlen_encoded"

# Bucketing of the plan (``varlen.make_plan``'s multiples), per size: (floor, steps per doubling). A size
# n rounds up to a multiple of max(floor, 2**floor(log2 n) / steps), so each doubling of n brings at most
# ``steps`` compiled shapes and wastes less than 1/steps of n. T decides the dense layers' cost, hence
# the finer steps; L and G only shape the attention blocks, a small share of the work. On 2000 docstring
# sentences of MiniLM's tokenizer, batches of 32 in input order: 33 plan shapes for 63 batches (47 with
# fixed multiples 64/8/8), T 4.6% above the real tokens.
BUCKETS = {"token": (64, 8), "length": (8, 2), "block": (8, 2)}

# Encoder inputs that are per token and so are packed with the plan (the rest pass through unchanged).
_TOKEN_INPUTS = ("input_ids", "token_type_ids", "position_ids", "inputs_embeds")


_multiple = varlen.geometric_multiple  # the rounding rule, shared in bert_common.varlen


def bucketed_plan(attention_mask: np.ndarray | None, position_ids: np.ndarray | None,
                  shape: tuple[int, int]) -> varlen.Plan:
    """``varlen.make_plan`` with T, L, G rounded up per :data:`BUCKETS` (from the exact sizes, one pass)."""
    return varlen.make_plan(attention_mask, position_ids, shape, buckets=BUCKETS)


def plan_arrays(plan: varlen.Plan, config: BertConfig) -> dict[str, np.ndarray]:
    """What the jitted encoder needs of the plan: gather (G, L), slot (T,), allowed (G, 1|L, L) bool and,
    for relative position types, the distance-embedding index: (L, L) when one lane-difference index serves
    every block (the usual case), else (G, L, L); all from ``bert_common.varlen``."""
    out = {"gather": plan.gather, "slot": plan.slot, "allowed": varlen.block_allowed(plan, config.is_decoder)}
    if config.is_relative:
        out["relative"] = varlen.block_relative_index(plan, config.max_position_embeddings, shared=True)
    return out


# ================================================================================================ in the graph
class Blocks(NamedTuple):
    """The attention blocks of a packed batch, built once per forward (``BertModule``) and passed to every
    layer in place of the padded additive mask."""
    gather: jax.Array               # (G, L) int32: the packed token in each block slot
    slot: jax.Array                 # (T,) int32: g * L + l, where each packed token sits
    mask: jax.Array                 # (G, 1, 1|L, L) additive: 0 kept, finfo(dtype).min dropped
    relative: jax.Array | None      # (L, L) | (G, L, L) int32 distance_embedding index (relative), else None


def blocks(arrays: Mapping[str, jax.Array], dtype) -> Blocks:
    """:func:`plan_arrays` on device -> :class:`Blocks` with the additive mask in ``dtype`` (the padded
    path's mask dtype rule, ``semantics.mask_dtype``)."""
    allowed = arrays["allowed"][:, None]                                                # (G, 1, 1|L, L)
    mask = jnp.where(allowed, jnp.zeros((), dtype), jnp.finfo(dtype).min)
    return Blocks(arrays["gather"], arrays["slot"], mask, arrays.get("relative"))


def to_blocks(x: jax.Array, b: Blocks) -> jax.Array:
    """Packed heads (1, N, T, D) -> each sequence in its block (G, N, L, D); empty slots hold token 0
    (masked as keys, never read back as queries)."""
    per_token = x[0].transpose(1, 0, 2)                                                 # (T, N, D)
    return jnp.take(per_token, b.gather, axis=0).transpose(0, 2, 1, 3)                  # (G, N, L, D)


def from_blocks(context: jax.Array, b: Blocks) -> jax.Array:
    """Block context (G, L, H) -> packed (1, T, H): the row of each token's slot."""
    G, L, H = context.shape
    return jnp.take(context.reshape(G * L, H), b.slot, axis=0)[None]


def scatter(x: jax.Array, token_index: jax.Array, B: int, S: int) -> jax.Array:
    """Packed (1, T, ...) -> (B, S, ...) with 0 at dropped tokens; dummies land in row B * S, dropped."""
    rest = x.shape[2:]
    out = jnp.zeros((B * S + 1,) + rest, x.dtype).at[token_index].set(x[0])
    return out[:-1].reshape((B, S) + rest)


def scatter_outputs(encoded: Mapping[str, Any], B: int, S: int) -> dict:
    """The encoder's packed outputs -> the padded layout: last_hidden_state and each hidden_states entry
    (1, T, H) -> (B, S, H); each cached key/value (1, N, T, D) -> (B, N, S, D)."""
    idx = encoded["token_index"]
    out = {"last_hidden_state": scatter(encoded["last_hidden_state"], idx, B, S)}
    if "hidden_states" in encoded:
        out["hidden_states"] = tuple(scatter(h, idx, B, S) for h in encoded["hidden_states"])
    if "past_key_values" in encoded:
        heads = lambda t: scatter(t.transpose(0, 2, 1, 3), idx, B, S).transpose(0, 2, 1, 3)  # noqa: E731
        out["past_key_values"] = tuple(tuple(heads(t) for t in layer) for layer in encoded["past_key_values"])
    return out


def segment_mask(attention_mask: jax.Array | None, position_ids: jax.Array | None, shape: tuple[int, int],
                 causal: bool, dtype) -> jax.Array:
    """segments mode: the additive (B, 1, S, S) mask of ``varlen.segment_ids``'s rule, in-graph.

    ``attention_mask`` (B, S) 0/1 or None; ``position_ids`` as given by the caller (None = not given, then
    each row is one sequence). Token i sees token j iff both are kept and in the same sequence (and, for
    decoders, j <= i). A dropped query sees nothing: finfo.min everywhere averages the values, no NaN.
    """
    kept = jnp.ones(shape, bool) if attention_mask is None else attention_mask != 0
    start = kept & (jnp.cumsum(kept, axis=-1) == 1)
    if position_ids is not None:
        start = start | (kept & (jnp.broadcast_to(position_ids, shape) == 0))
    seg = jnp.cumsum(start, axis=-1) * kept                                             # (B, S)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)              # (B, S, S)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones(shape[-1:] * 2, bool))
    return jnp.where(allowed, jnp.zeros((), dtype), jnp.finfo(dtype).min)[:, None]      # (B, 1, S, S)


# ================================================================================================ on the host
class Unpadded:
    """unpad mode of one model: the jitted encoder on packed tokens and the call that drives both halves.

    ``trace_count`` counts traces (compilations) of the packed encoder; the model's own ``trace_count``
    counts those of its forward, which here is the scatter + pooler + head half.
    """

    def __init__(self, model, encoder_class, compiler_options: Mapping[str, Any] | None = None):
        self.model, self.encoder_class = model, encoder_class
        self.trace_count = 0
        self._jitted = jax.jit(self._encode, static_argnames=("flags",),
                               compiler_options=dict(compiler_options) if compiler_options else None)
        # JAX accepts compiler_options only on a top-level jit; under jax.grad (traced params) this one runs.
        self._jitted_nested = jax.jit(self._encode, static_argnames=("flags",))

    def _encode(self, params, packed, dropout_rng, flags) -> dict:
        """Stage 1 (traced once per plan shape and flags): ``BertModule`` without pooler on (1, T)."""
        self.trace_count += 1  # Python side effect: runs once per compilation, never per call
        train, _, output_hidden_states, use_cache, eager, _ = flags
        m = self.model
        module = self.encoder_class(config=m.config, dtype=m.dtype, param_dtype=m.param_dtype,
                                    add_pooling_layer=False, deterministic=not train,
                                    output_hidden_states=output_hidden_states, use_cache=use_cache, eager=eager)
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        return module.apply({"params": params}, packed, rngs=rngs)

    def pack(self, raw: Mapping[str, Any], head_mask) -> tuple[varlen.Plan, dict]:
        """Host inputs (as given; multiple choice still (B, C, S)) -> (plan, packed (1, T) batch)."""
        m = self.model
        view = encoder_view(m.model_class, {k: np.asarray(raw[k]) for k in (*_TOKEN_INPUTS, "attention_mask")
                                            if k in raw})
        lead = view["input_ids"].shape if "input_ids" in view else view["inputs_embeds"].shape[:-1]
        B, S = (int(d) for d in lead)
        given_positions = view.get("position_ids")
        plan = bucketed_plan(view.get("attention_mask"), given_positions, (B, S))
        # Default positions are the padded default, the column index; dummies get id 0, type 0, position 0.
        positions = np.arange(S) if given_positions is None else given_positions
        packed = {"position_ids": plan.take(np.broadcast_to(positions, (B, S)).astype(np.int32))[None]}
        for k in ("input_ids", "token_type_ids"):
            if k in view:
                packed[k] = plan.take(view[k].astype(np.int32))[None]                    # (1, T)
        if "inputs_embeds" in view:
            packed["inputs_embeds"] = plan.take(view["inputs_embeds"].astype(np.float32))[None]  # (1, T, H)
        if "token_type_ids" not in packed:
            packed["token_type_ids"] = np.zeros_like(packed["position_ids"])
        if head_mask is not None:
            packed["head_mask"] = head_mask
        packed[PLAN] = plan_arrays(plan, m.config)
        return plan, packed

    def __call__(self, params, raw: Mapping[str, Any], batch: Mapping[str, Any], dropout_rng, flags) -> dict:
        """One unpad forward -> the model's dict of HF fields. ``raw``: the call's inputs as given (host
        values, for the plan); ``batch``: the same after validation and conversion (labels for stage 2)."""
        m = self.model
        m._check_dropout_rng(flags[0], dropout_rng)
        plan, packed = self.pack(raw, batch.get("head_mask"))
        nested = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(params))
        rng_encoder, rng_head = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
        encoder_params = params["bert"] if "bert" in params else params  # heads nest the encoder as "bert"
        encoded = (self._jitted_nested if nested else self._jitted)(encoder_params, packed, rng_encoder,
                                                                     flags=flags)
        encoded["token_index"] = plan.token_index.astype(np.int32)
        # Stage 2 needs the ids' shape (B, S) / (B, C, S) and the labels, not the per-token inputs.
        rest = {k: v for k, v in batch.items() if k not in ("attention_mask", "token_type_ids", "position_ids",
                                                             "head_mask")}
        forward = m._jitted_nested if nested else m._jitted
        return forward(params, {**rest, ENCODED: encoded}, rng_head, flags=flags)
