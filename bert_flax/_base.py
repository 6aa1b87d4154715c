"""The private half of ``modeling.BertPreTrainedModel``: construction (the Linen module, the params pytree,
the jitted forwards), warnings given once, the call's flags and jit cache, output packing, and the bodies
of the loading / saving / decoding methods, so that ``modeling.py`` reads as the module tree. Nothing here
defines a Linen module or names a parameter; the module classes come in as attributes or arguments.

Three ways in: ``__call__`` (its signature and docs in ``modeling.py``) -> :meth:`ModelBase._call` (host
checks, then the jitted forward cached per shape and flags); :meth:`ModelBase.apply` -> ``_apply`` (the pure
function, no jit of its own); both hand varlen's unpadded calls to ``bert_flax._varlen.Unpadded``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bert_common import semantics
from bert_common.generation import generate as _generate
from bert_common.model_base import SharedModelBase
from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
from bert_common.pretrained import canonical_from_backend, load_for_backend, save_from_backend
from bert_common.weights import LoadReport, init_weights, match_state_dict, to_scheme
from bert_flax import _varlen
from bert_flax._jit import _is_traced, checked, fixed_cache_step, flat, nest

SCHEME = BACKEND = "flax"


def resolve_dtype(dtype: Any, default: Any = jnp.float32) -> jnp.dtype:
    """A dtype or its name -> ``jnp.dtype``; None -> ``default``."""
    return jnp.dtype(default if dtype is None else dtype)


def _any_traced(tree) -> bool:
    return any(_is_traced(x) for x in jax.tree_util.tree_leaves(tree))


class ModelBase(SharedModelBase):
    """Mixed into ``BertPreTrainedModel`` (a plain class with ``config``, ``model_class``, ``module_class``,
    ``load_report``, ``_warned``)."""

    # user -> __call__ / apply -> _call / _apply -> _flags -> _warn_once: the warning points at the user
    _warn_stacklevel = 5

    # -- construction: the Linen module, the params pytree in the flax scheme, the jitted forwards
    def _finish(self, seed: int, add_pooling_layer: bool | None, dtype: Any, param_dtype: Any,
                params: Mapping | None, compiler_options: Mapping[str, Any] | None, encoder_class: type) -> None:
        """``encoder_class`` is the bare ``BertModule``: varlen's packed encoder runs it without the head."""
        config = self.config
        self.add_pooling_layer = semantics.add_pooling_layer(self.model_class, add_pooling_layer)
        self.dtype, self.param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self.module = self.module_class(config=config, dtype=self.dtype, param_dtype=self.param_dtype,
                                        add_pooling_layer=self.add_pooling_layer)
        if params is None:
            params = nest(to_scheme(init_weights(config, self.model_class, seed, self.add_pooling_layer), SCHEME))
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.param_dtype), params)
        self.trace_count = 0  # how many times the jitted forward was traced (compiled); tests read it
        # compiler_options go to XLA for the forward's jit, e.g. {"xla_backend_optimization_level": 0}
        # compiles several times faster on CPU (tests, debugging) at some run-time cost.
        self._jitted = jax.jit(self._traced_forward, static_argnames=("flags",),
                               compiler_options=dict(compiler_options) if compiler_options else None)
        # JAX accepts compiler_options only on a top-level jit; under jax.grad (traced params) this one runs.
        self._jitted_nested = jax.jit(self._traced_forward, static_argnames=("flags",))
        self._unpad = _varlen.Unpadded(self, encoder_class, compiler_options)  # varlen's packed encoder

    # -- flags (the static jit key), the forward, its jit cache
    def _flags(self, train, output_attentions, output_hidden_states, use_cache, batch) -> tuple:
        """-> (train, output_attentions, output_hidden_states, use_cache, eager, varlen mode), all static."""
        use_cache = semantics.use_cache(self.config, self.model_class, use_cache,
                                        has_labels=semantics.has_loss(self.model_class, batch))
        eager, note = semantics.attention_path(self.config, BACKEND, bool(output_attentions), "head_mask" in batch)
        if note:
            self._warn_once("sdpa_fallback", note)
        concrete = not _any_traced(batch)
        varlen = semantics.varlen_mode(self.config, concrete, bool(output_attentions), batch)  # a static key
        return bool(train), bool(output_attentions), bool(output_hidden_states), use_cache, eager, varlen

    def _check_dropout_rng(self, train: bool, dropout_rng) -> None:
        if train and dropout_rng is None and self._has_dropout():
            raise ValueError("train=True needs dropout_rng (a jax.random key); dropout uses an explicit rng")

    def _has_dropout(self) -> bool:
        c = self.config
        return max(c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.classifier_dropout_prob) > 0

    def _forward(self, params, batch, dropout_rng, flags) -> dict:
        """The Linen module with the call's flags: params pytree + checked batch -> dict of HF fields."""
        train, output_attentions, output_hidden_states, use_cache, eager, _ = flags
        self._check_dropout_rng(train, dropout_rng)
        module = self.module.clone(deterministic=not train, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, use_cache=use_cache, eager=eager)
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        out = module.apply({"params": params}, batch, rngs=rngs)
        # Only the fields of the class's output (MaskedLM with cross-attention returns no cross_attentions).
        fields = OUTPUT_FIELDS[OUTPUT_OF[self.model_class]]
        return {k: v for k, v in out.items()
                if k in fields and (k != "loss" or semantics.has_loss(self.model_class, batch))}

    def _traced_forward(self, params, batch, dropout_rng, flags):
        self.trace_count += 1  # Python side effect: runs once per compilation, never per call
        return self._forward(params, batch, dropout_rng, flags)

    # -- the pure function and the call
    @property
    def label_names(self) -> tuple[str, ...]:
        """The label keyword arguments this class takes (``semantics.LABEL_ARGS``)."""
        return semantics.LABEL_ARGS[self.model_class]

    def apply(self, params, *, train: bool = False, dropout_rng=None, output_attentions: bool = False,
              output_hidden_states: bool = False, use_cache: bool | None = None, check: str = "callback",
              **inputs) -> dict:
        """Pure forward: params pytree + inputs (keyword, ``semantics.call_args``) -> dict of HF fields.

        Safe under ``jax.jit`` (flags static: ``static_argnames=("train", "output_attentions",
        "output_hidden_states", "use_cache", "check")``), ``jax.grad`` and sharding. Concrete inputs are
        validated with ``bert_common.validation``; traced ones per ``check`` (CHECK_MODES).
        """
        batch = {k: v for k, v in semantics.check_call_args(self.model_class, inputs).items() if v is not None}
        return self._apply(params, batch, train, dropout_rng, output_attentions, output_hidden_states, use_cache,
                           check)

    def _apply(self, params, batch: dict, train: bool, dropout_rng, output_attentions: bool,
               output_hidden_states: bool, use_cache: bool | None, check: str) -> dict:
        """The body of ``apply`` (``batch``: the given keywords, None dropped), one frame below it as
        ``_call`` is below ``__call__``, so that ``_warn_once`` points at the caller from both."""
        flags = self._flags(train, output_attentions, output_hidden_states, use_cache, batch)
        raw, batch = batch, checked(self.config, self.model_class, batch, check)
        if flags[-1] == "unpad":
            return self._unpad(params, raw, batch, dropout_rng, flags)
        return self._forward(params, batch, dropout_rng, flags)

    def _call(self, params, inputs: dict, train: bool, dropout_rng, use_cache: bool | None,
              output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None):
        """The body of ``__call__``: ``inputs`` are its keywords after ``semantics.check_call_args``."""
        inputs.pop("use_cache", None)
        batch = {k: v for k, v in inputs.items() if v is not None}
        output_attentions, output_hidden_states, return_dict = semantics.resolve_flags(
            self.config, output_attentions, output_hidden_states, return_dict)
        flags = self._flags(train, output_attentions, output_hidden_states, use_cache, batch)
        params = self.params if params is None else params
        traced = _any_traced(batch)
        raw, batch = batch, checked(self.config, self.model_class, batch, self.check_mode)
        if flags[-1] == "unpad":  # varlen on concrete inputs: the plan is made here, on the host
            out = self._unpad(params, raw, batch, dropout_rng, flags)
        elif traced:  # called under a user's jit: their jit compiles the forward
            out = self._forward(params, batch, dropout_rng, flags)
        else:
            self._check_dropout_rng(flags[0], dropout_rng)
            forward = self._jitted_nested if _any_traced(params) else self._jitted
            out = forward(params, batch, dropout_rng, flags=flags)
        return self._return(return_dict, **out)

    # -- the params pytree
    def init_params_shapes(self, batch_size: int = 1, seq_length: int = 8):
        """``jax.eval_shape`` of the Linen init: the params tree structure and shapes, allocating nothing."""
        batch = {"input_ids": jax.ShapeDtypeStruct((batch_size, seq_length), jnp.int32)}
        if self.model_class == "BertForMultipleChoice":
            batch = {"input_ids": jax.ShapeDtypeStruct((batch_size, 2, seq_length), jnp.int32)}
        if self.config.add_cross_attention:
            batch["encoder_hidden_states"] = jax.ShapeDtypeStruct((batch_size, 3, self.config.hidden_size),
                                                                  jnp.float32)
        return jax.eval_shape(lambda b: self.module.init(jax.random.PRNGKey(0), b), batch)["params"]

    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, dtype={self.dtype.name}, param_dtype={self.param_dtype.name})"

    # -- bodies of the public loading / saving / decoding methods (signatures and docs: modeling.py)
    def _canonical_state_dict(self) -> dict[str, np.ndarray]:
        return canonical_from_backend({k: np.asarray(v) for k, v in flat(self.params).items()}, self.config,
                                      self.model_class, SCHEME, self.add_pooling_layer)

    def _load_canonical_state_dict(self, state: Mapping[str, np.ndarray]) -> LoadReport:
        full, report = match_state_dict(state, self.config, self.model_class, self.add_pooling_layer)
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.param_dtype),
                                             nest(to_scheme(full, SCHEME)))
        return report

    @classmethod
    def _from_pretrained(cls, path, config, allow_new_head: bool, add_pooling_layer: bool | None, dtype: Any,
                         param_dtype: Any, seed: int, compiler_options: Mapping[str, Any] | None,
                         config_overrides: dict[str, Any]):
        config, tensors, report = load_for_backend(path, cls.model_class, SCHEME, config=config,
                                                   allow_new_head=allow_new_head,
                                                   add_pooling_layer=add_pooling_layer, seed=seed, **config_overrides)
        compute = resolve_dtype(dtype)
        model = cls(config, add_pooling_layer=add_pooling_layer, dtype=compute,
                    param_dtype=resolve_dtype(param_dtype, compute), params=nest(tensors),
                    compiler_options=compiler_options)
        model.load_report = report
        return model

    def _save_pretrained(self, path: str | os.PathLike, shard_size: str | int | None) -> str:
        tensors = {k: np.asarray(v) for k, v in flat(self.params).items()}
        return save_from_backend(os.fspath(path), tensors, self.config, self.model_class, SCHEME,
                                 self.add_pooling_layer, shard_size=shard_size)

    def _generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                  encoder_attention_mask, **sampling) -> np.ndarray:
        semantics.check_generate(self.config)
        eos, pad = semantics.generation_defaults(self.config, eos_token_id, pad_token_id)
        encoder = dict(encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)

        def growing(feed, mask, past):  # when a fixed window would pass max_position_embeddings
            out = self(feed, attention_mask=mask, past_key_values=past, use_cache=True, **encoder)
            return np.asarray(out.logits[:, -1], np.float32), out.past_key_values

        step = fixed_cache_step(self, input_ids, sampling["max_new_tokens"], **encoder) or growing
        return _generate(step, input_ids, attention_mask, eos_token_id=eos, pad_token_id=pad, **sampling)
