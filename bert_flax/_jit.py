"""Flax plumbing kept out of ``modeling.py``: the params pytree's flat names, outputs as pytrees, and
input validation: on the host with ``bert_common.validation`` for concrete inputs, in-graph when the
forward is traced by a user's ``jax.jit``; then the conversion to JAX arrays of fixed dtypes."""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import checkify

from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.outputs import OUTPUT_CLASSES
from bert_common.validation import (check_inputs, check_labels, check_rank, empty_message, input_limits,
                                    label_range_message, label_rules, length_message, mask_value_message,
                                    range_message)

# How ``apply`` validates inputs it cannot see (tracers under a user's jit):
#   "callback": a host callback raises the DESIGN §6 ValueError; it surfaces as jax.errors.JaxRuntimeError
#               whose message contains that ValueError text (default; never a silent NaN).
#   "checkify": checkify.check with the same message; wrap the function in checkify.checkify and call
#               err.throw(), which raises checkify.JaxRuntimeError, a ValueError subclass.
#   "off":      no check (fastest); an out-of-range id then gathers NaN (jnp.take fill mode).
CHECK_MODES = ("callback", "checkify", "off")


def _raise_if(mode: str, bad, values, message_of) -> None:
    """In-graph: raise ``message_of(first bad value)`` when ``bad`` (same shape as ``values``) has a True."""
    first = jnp.where(bad.any(), values.ravel()[jnp.argmax(bad.ravel())], jnp.zeros((), values.dtype))
    if mode == "checkify":
        checkify.check(~bad.any(), message_of("{value}"), value=first)
    else:
        def raise_on_host(any_bad, value):
            if bool(any_bad):
                raise ValueError(message_of(value.item()))
        jax.debug.callback(raise_on_host, bad.any(), first)


def in_graph_checks(config: BertConfig, batch: Mapping[str, Any], mode: str, model_class: str = "BertModel",
                    labels: Mapping[str, Any] | None = None, num_choices: int | None = None) -> None:
    """Value checks on traced inputs (the concrete path uses ``check_inputs`` / ``check_labels``): id
    ranges, 0/1 masks, label ranges, all with the messages of ``bert_common.validation``. Shapes are
    static under tracing, so the shape rules run in Python first (``_check_shapes``)."""
    if mode not in CHECK_MODES:
        raise ValueError(f"check={mode!r} is not one of {list(CHECK_MODES)}")
    _check_shapes(config, batch)
    if mode == "off":
        return
    for arg, (limit, source) in input_limits(config).items():
        x = batch.get(arg)
        if x is not None:
            _raise_if(mode, (x < 0) | (x >= limit), x,
                      lambda v, arg=arg, limit=limit, source=source: range_message(arg, v, limit, source))
    for arg in ("attention_mask", "encoder_attention_mask"):
        m = batch.get(arg)
        if m is not None:
            _raise_if(mode, ~((m == 0) | (m == 1)), m, lambda v, arg=arg: mask_value_message(arg, v))
    for arg, (_, _, limit, source, ignore) in label_rules(config, model_class, num_choices).items():
        y = (labels or {}).get(arg)
        if y is None or limit is None or not jnp.issubdtype(y.dtype, jnp.integer):
            continue
        bad = ((y < 0) | (y >= limit)) & ~((y == -100) if ignore else False)
        _raise_if(mode, bad, y, lambda v, arg=arg, limit=limit, source=source, ignore=ignore:
                  label_range_message(arg, v, limit, source, ignore))


_in_graph_checks = in_graph_checks  # the earlier private name


# ------------------------------------------------------------------------------------------ host side
# Integer inputs and the float inputs; everything else of a batch is a label (int or float) or the cache.
INT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "encoder_attention_mask")
FLOAT_INPUTS = ("head_mask", "inputs_embeds", "encoder_hidden_states")


def encoder_view(model_class: str, batch: dict) -> dict:
    """The batch as the encoder sees it (multiple choice flattens (B, C, S) -> (B*C, S))."""
    if model_class != "BertForMultipleChoice":
        return batch
    _, plan = semantics.choice_plan({k: None if batch.get(k) is None else np.shape(batch[k])
                                     for k in semantics.CHOICE_RANKS})
    return {**batch, **{k: batch[k].reshape(plan[k]) for k in plan}}


def lead_shape(batch: dict) -> tuple:
    ids = batch.get("input_ids")
    return tuple(np.shape(ids)) if ids is not None else tuple(np.shape(batch["inputs_embeds"]))[:-1]


def checked(config: BertConfig, model_class: str, batch: dict, mode: str) -> dict:
    """Validate a model's batch (on the host when concrete, in-graph per ``mode`` when traced), then
    convert it (``prepare``)."""
    labels = {k: batch[k] for k in semantics.LABEL_ARGS[model_class] if k in batch}
    if any(_is_traced(x) for x in jax.tree_util.tree_leaves(batch)):
        lead = lead_shape(batch)
        choices = lead[1] if model_class == "BertForMultipleChoice" and len(lead) == 3 else None
        in_graph_checks(config, encoder_view(model_class, batch), mode, model_class, labels, choices)
        return prepare(batch)
    if semantics.has_loss(model_class, labels):
        arrays = {k: np.asarray(v) for k, v in labels.items()}
        problem = None
        if model_class == "BertForSequenceClassification":
            problem = semantics.problem_type(config, np.issubdtype(arrays["labels"].dtype, np.integer))
        check_labels(config, model_class, arrays, lead_shape(batch), problem)
    view = encoder_view(model_class, {k: np.asarray(v) if k != "past_key_values" else v for k, v in batch.items()})
    check_inputs(config, packed=semantics.packed_rows(config, view.get("position_ids")),
                 input_ids=view.get("input_ids"), token_type_ids=view.get("token_type_ids"),
                 position_ids=view.get("position_ids"), attention_mask=view.get("attention_mask"),
                 inputs_embeds_shape=None if view.get("inputs_embeds") is None else view["inputs_embeds"].shape,
                 past_length=past_length(view.get("past_key_values")),
                 encoder_hidden_shape=None if view.get("encoder_hidden_states") is None
                 else np.shape(view["encoder_hidden_states"]),
                 encoder_attention_mask=view.get("encoder_attention_mask"))
    ehs = view.get("encoder_hidden_states")
    if ehs is not None and not config.add_cross_attention:
        raise ValueError("encoder_hidden_states was given but config.add_cross_attention=False")
    if ehs is not None and (np.ndim(ehs) != 3 or np.shape(ehs)[-1] != config.hidden_size):
        raise ValueError(f"encoder_hidden_states has shape {tuple(np.shape(ehs))} but must be "
                         f"(batch, encoder seq, config.hidden_size={config.hidden_size})")
    if "head_mask" in batch:
        semantics.head_mask_kind(config, np.shape(batch["head_mask"]))
    return prepare(batch)


def prepare(batch: dict) -> dict:
    """NumPy/JAX inputs -> JAX arrays with fixed dtypes (int32 ids and masks, float32 states)."""
    out = {}
    for k, v in batch.items():
        if k == "past_key_values":
            out[k] = tuple(tuple(jnp.asarray(t) for t in layer) for layer in v)
        elif k in INT_INPUTS:
            out[k] = jnp.asarray(v, jnp.int32)
        elif k in FLOAT_INPUTS:
            out[k] = jnp.asarray(v, jnp.float32)
        else:  # labels: ints stay int32, floats (regression, multi-label) float32
            a = v if _is_traced(v) else np.asarray(v)
            out[k] = jnp.asarray(a, jnp.int32 if jnp.issubdtype(a.dtype, jnp.integer) else jnp.float32)
    return out


def _check_shapes(config: BertConfig, batch: Mapping[str, Any]) -> None:
    """The static half of the input rules (rank, zero length, lengths, mask shapes), usable on tracers."""
    ids = batch.get("input_ids")
    base = tuple(ids.shape) if ids is not None else tuple(batch["inputs_embeds"].shape[:-1])
    check_rank(ids is not None, base if ids is not None else batch["inputs_embeds"].shape)
    if isinstance(base[-1], int) and base[-1] == 0:  # a symbolic length (jax.export) is never empty here
        raise ValueError(empty_message("input_ids" if ids is not None else "inputs_embeds", base))
    past = past_length(batch.get("past_key_values"))
    # Packed varlen rows restart their positions per sequence: the limit then holds for the position ids.
    packed = semantics.packed_rows(config, batch.get("position_ids"))
    if not packed and base[-1] + past > config.max_position_embeddings:
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


def nest(flat: Mapping[str, Any]) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}} (the scheme's "/"-joined paths to the params pytree)."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flat(params: Mapping) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}




_nest, _flat = nest, flat  # earlier private names (conformance adapters import them from modeling)


# ------------------------------------------------------------------------------------------ generate
def fixed_cache_step(model, input_ids, max_new_tokens: int, **encoder):
    """``bert_common.generation``'s ``step(ids, mask, past)`` for ``model.generate`` with a cache of fixed
    size, so the decode steps all have one shape and compile once (the prefill compiles once more).

    The cache keeps W = P0 + max_new_tokens - 1 self-attention columns, right-aligned: the prompt's
    (B, N, P0, D) keys/values are left-padded with zeros to W, and after each step, whose forward appends
    one column (W + 1), the oldest column, always padding, is dropped. The (B, K) mask is left-padded with
    zeros to W + 1 in step, so the padding is never attended, and the query's column is K - 1 columns after
    the first real one, as in the growing cache: relative distances are unchanged, absolute positions are
    passed as ``position_ids`` (K - 1). User calls with ``past_key_values`` keep the growing cache.
    None when the window would pass ``max_position_embeddings`` (the growing cache then fails where it
    reaches it, as before) or the arguments are not a (B, P0) prompt and a count >= 1 (the loop says why).
    """
    shape = np.shape(input_ids)
    if (len(shape) != 2 or not isinstance(max_new_tokens, int) or max_new_tokens < 1
            or shape[1] + max_new_tokens > model.config.max_position_embeddings):
        return None
    width = shape[1] + max_new_tokens - 1

    def step(feed, mask, past):
        if past is None:  # the prompt: (B, P0), compiled for its own shape
            out = model(feed, attention_mask=mask, use_cache=True, **encoder)
        else:  # one token at column K - 1, after the W cached columns
            B, K = mask.shape
            out = model(feed, attention_mask=np.pad(mask, ((0, 0), (width + 1 - K, 0))), past_key_values=past,
                        position_ids=np.full((B, 1), K - 1, np.int32), use_cache=True, **encoder)
        return np.asarray(out.logits[:, -1], np.float32), _window(out.past_key_values, width)
    return step


@functools.partial(jax.jit, static_argnames=("width",))
def _window(past, width: int):
    """Each layer's self-attention keys/values (B, N, K', D) -> the last ``width`` columns, left-padded
    with zeros when K' < width; cross-attention keys/values (fixed size) pass unchanged."""
    def last(x):
        x = x[:, :, -width:]
        return jnp.pad(x, ((0, 0), (0, 0), (width - x.shape[2], 0), (0, 0)))
    return tuple((last(layer[0]), last(layer[1])) + tuple(layer[2:]) for layer in past)
