"""The private half of ``modeling.BertPreTrainedModel``: the dtype policy, construction, warnings given once,
the eager and XLA entry checks, call preparation and output packing, in-graph label checks, the packed
(varlen) program, and the bodies of the loading / saving / decoding methods, so that ``modeling.py`` reads
as the module tree. Nothing here owns a variable or a sub-module."""
from __future__ import annotations

import os
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from bert_common import generation, semantics
from bert_common.config import BertConfig
from bert_common.model_base import SharedModelBase
from bert_common.pretrained import canonical_from_backend, load_for_backend, save_from_backend
from bert_common.weights import init_weights, to_scheme
from bert_tf._generate import fixed_cache_step
from bert_tf._graph import label_checks
from bert_tf._keras import _TENSOR_ARGS, _to_tensor, _unpack_inputs, check_eager, compiled

SCHEME = BACKEND = "tf"
# dtype argument -> Keras dtype policy. "float16"/"bfloat16" keep weights in half precision too.
DTYPE_POLICIES = {None: None, "float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                  "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}


def dtype_policy(dtype):
    """The ``dtype`` argument of a model -> what ``keras.Model(dtype=)`` takes (a policy passes through)."""
    if isinstance(dtype, keras.DTypePolicy):
        return dtype
    if dtype not in DTYPE_POLICIES:
        raise ValueError(f"dtype={dtype!r} is not one of {list(DTYPE_POLICIES)}")
    return DTYPE_POLICIES[dtype]


class ModelBase(SharedModelBase):
    """Mixed into ``BertPreTrainedModel`` (a ``keras.Model`` with ``config``, ``model_class``, ``_warned`` and
    ``named_variables()``), before ``keras.Model`` so that ``__call__`` checks eager inputs first."""

    # -- construction: every variable is created by _build_modules, then filled from bert_common.weights.
    def _building(self, add_pooling_layer: bool | None) -> None:
        """Before ``_build_modules``: Keras' input handling and the pooler choice the modules depend on."""
        # Inputs are converted in _prepare (float labels stay fp32 under mixed precision).
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True  # NumPy batches and dicts of them, positionally
        self.add_pooling_layer = semantics.add_pooling_layer(self.model_class, add_pooling_layer)

    def _finish(self, seed: int, init: bool) -> None:
        self.built = True
        if init:
            self.load_canonical_state_dict(init_weights(self.config, self.model_class, seed,
                                                        self.add_pooling_layer))

    # -- validation and XLA
    def __call__(self, *args, **kwargs):
        # Eager: validate before Keras' __call__, so the ValueError reaches the caller unchanged (Keras
        # rewrites exceptions raised inside call()). Traced calls validate in-graph inside call().
        if tf.executing_eagerly():
            self._check_eager(args[0] if args else kwargs.get("input_ids"),
                              {k: v for k, v in kwargs.items() if k != "input_ids"})
        return super().__call__(*args, **kwargs)

    def _check_eager(self, input_ids, kwargs):
        """Call arguments, labels, then inputs as the encoder sees them (``bert_tf._keras.check_eager``)."""
        check_eager(self, input_ids, kwargs)

    def checked_xla(self, **options):
        """An XLA-compiled forward (``tf.function(jit_compile=True)``) that validates concrete inputs on the
        host first: the way to run XLA on untrusted inputs (see ``bert_tf._keras.compiled``)."""
        return compiled(self, options)

    # -- call plumbing
    def _prepare(self, input_ids, kwargs: dict) -> dict:
        """Merge dict inputs, check the call arguments, convert NumPy/lists to tensors, fill config defaults."""
        a = semantics.check_call_args(self.model_class, _unpack_inputs(input_ids, kwargs))
        for k in _TENSOR_ARGS:
            if a.get(k) is not None:
                a[k] = _to_tensor(a[k])
        if a.get("past_key_values") is not None:
            a["past_key_values"] = tf.nest.map_structure(_to_tensor, tuple(tuple(p) for p in a["past_key_values"]))
        flags = semantics.resolve_flags(self.config, a.get("output_attentions"), a.get("output_hidden_states"),
                                        a.get("return_dict"))
        a["output_attentions"], a["output_hidden_states"], a["return_dict"] = flags
        return a

    def _bert(self, a: dict, training: bool, **override):
        """A head's call of its ``bert`` with the prepared arguments ``a`` (``override`` replaces some)."""
        keys = ("attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "encoder_hidden_states", "encoder_attention_mask", "past_key_values",
                "output_attentions", "output_hidden_states")
        has_labels = semantics.has_loss(self.model_class, a)
        use_cache = semantics.use_cache(self.config, self.model_class, a.get("use_cache"), has_labels,
                                        bool(self.config.gradient_checkpointing and training))
        kw = {"input_ids": a.get("input_ids"), **{k: a.get(k) for k in keys}, "use_cache": use_cache, **override}
        return self.bert(return_dict=True, training=training, **kw)

    def _labels(self, a: dict) -> dict | None:
        """The class's labels from ``a`` with their in-graph range checks as dependencies
        (``bert_tf._graph.label_checks``; shapes were checked eagerly); None when no loss is requested."""
        if not semantics.has_loss(self.model_class, a):
            return None
        labels = {k: a[k] for k in semantics.LABEL_ARGS[self.model_class]}
        choices = a["input_ids"].shape[1] if self.model_class == "BertForMultipleChoice" and \
            a.get("input_ids") is not None else None
        checks = label_checks(self.config, self.model_class, labels, choices)
        with tf.control_dependencies(checks):
            return {k: tf.identity(v) for k, v in labels.items()}

    def _encoder_outputs(self, out: Mapping) -> dict:
        """The encoder fields every head passes through."""
        return {"hidden_states": out.get("hidden_states"), "attentions": out.get("attentions")}

    def _packed_program(self, inputs: dict, blocks, head_mask, flags: tuple):
        """varlen "unpad": embeddings + encoder on the packed (1, T) inputs and ``Blocks``, as one
        ``tf.function`` per model (``reduce_retracing``: after a second plan shape it traces once with
        unknown T, G, L): eager TF would dispatch every op from Python, which costs more than the padding
        the plan removed. ``flags`` (use_cache, output_attentions, output_hidden_states, eager, training)
        are made Python bools, part of the trace key."""
        if getattr(self, "_packed_fn", None) is None:
            def run(inputs, blocks, head_mask, flags):
                use_cache, output_attentions, output_hidden_states, eager, training = flags
                x = self.embeddings(**inputs, past_length=0, training=training)
                return self.encoder(x, attention_mask=blocks, head_mask=head_mask, encoder_hidden_states=None,
                                    encoder_attention_mask=None, past_key_values=None, past_length=0,
                                    use_cache=use_cache, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states, eager=eager, training=training)
            self._packed_fn = tf.function(run, reduce_retracing=True)
        return self._packed_fn(inputs, blocks, head_mask, tuple(bool(f) for f in flags))

    # -- bodies of the public loading / saving / decoding methods (signatures and docs: modeling.py)
    def _scheme_tensors(self) -> dict[str, np.ndarray]:
        """``{tf scheme path: fp32 np.ndarray}`` of every variable (kernels in the Keras layout)."""
        return {p: np.asarray(tf.cast(v.value, tf.float32)) for p, v in self.named_variables().items()}

    def _canonical_state_dict(self) -> dict[str, np.ndarray]:
        return canonical_from_backend(self._scheme_tensors(), self.config, self.model_class, SCHEME,
                                      self.add_pooling_layer)

    def _load_canonical_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
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

    @classmethod
    def _from_pretrained(cls, path: str | os.PathLike, config: BertConfig | None, allow_new_head: bool,
                         add_pooling_layer: bool | None, dtype: Any, seed: int, config_overrides: dict[str, Any]):
        config, tensors, report = load_for_backend(path, cls.model_class, SCHEME, config=config,
                                                   allow_new_head=allow_new_head,
                                                   add_pooling_layer=add_pooling_layer, seed=seed, **config_overrides)
        model = cls(config, add_pooling_layer=add_pooling_layer, dtype=dtype, _init=False)
        model._assign_scheme(tensors)
        model.load_report = report
        return model

    def _save_pretrained(self, path: str | os.PathLike, shard_size: str | int | None) -> str:
        return save_from_backend(path, self._scheme_tensors(), self.config, self.model_class, SCHEME,
                                 self.add_pooling_layer, shard_size=shard_size)

    def _generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, encoder_hidden_states,
                  encoder_attention_mask, **sampling) -> np.ndarray:
        semantics.check_generate(self.config)
        eos, pad = semantics.generation_defaults(self.config, eos_token_id, pad_token_id)
        encoder = {k: v for k, v in (("encoder_hidden_states", encoder_hidden_states),
                                     ("encoder_attention_mask", encoder_attention_mask)) if v is not None}

        def growing(ids, mask, past):
            out = self(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), past_key_values=past,
                       use_cache=True, encoder_hidden_states=encoder_hidden_states,
                       encoder_attention_mask=encoder_attention_mask, training=False)
            return out["logits"][:, -1].numpy(), out["past_key_values"]

        step = fixed_cache_step(self, input_ids, attention_mask, sampling["max_new_tokens"], encoder) or growing
        return generation.generate(step, input_ids, attention_mask, eos_token_id=eos, pad_token_id=pad,
                                   **sampling)
