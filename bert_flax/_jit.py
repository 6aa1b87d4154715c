"""Flax plumbing kept out of ``modeling.py``: the params pytree's flat names, outputs as pytrees, and
input validation when the forward is traced by a user's ``jax.jit`` (concrete inputs are checked on the
host with ``bert_common.validation`` instead)."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.experimental import checkify

from bert_common.config import BertConfig
from bert_common.outputs import OUTPUT_CLASSES
from bert_common.validation import (check_rank, empty_message, input_limits, label_range_message, label_rules,
                                    length_message, mask_value_message, range_message)

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


def _check_shapes(config: BertConfig, batch: Mapping[str, Any]) -> None:
    """The static half of the input rules (rank, zero length, lengths, mask shapes), usable on tracers."""
    ids = batch.get("input_ids")
    base = tuple(ids.shape) if ids is not None else tuple(batch["inputs_embeds"].shape[:-1])
    check_rank(ids is not None, base if ids is not None else batch["inputs_embeds"].shape)
    if isinstance(base[-1], int) and base[-1] == 0:  # a symbolic length (jax.export) is never empty here
        raise ValueError(empty_message("input_ids" if ids is not None else "inputs_embeds", base))
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


def nest(flat: Mapping[str, Any]) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}} (the scheme's "/"-joined paths to the params pytree)."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flat(params: Mapping) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}




_nest, _flat = nest, flat  # earlier private names (conformance adapters import them from modeling)
