"""Keras plumbing kept out of ``modeling.py``: input conversion and packing, the variable walk, a dense
gradient for embedding gathers, the layer base ``_Module`` with the ``Dense`` and ``Embedding`` layers the
module tree is built from (what ``nn.Linear`` / ``nn.Embedding`` are to torch), gradient checkpointing,
host-side validation, the XLA entry point and the ``fit`` / ``predict`` hooks."""
from __future__ import annotations

import warnings
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.validation import check_inputs, check_labels

_ARG_NAMES = semantics.COMMON_ARGS + semantics.ENCODER_ARGS + semantics.CACHE_ARGS + (
    "labels", "next_sentence_label", "start_positions", "end_positions")
_TENSOR_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
                "encoder_hidden_states", "encoder_attention_mask", "labels", "next_sentence_label",
                "start_positions", "end_positions")
_INT_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "encoder_attention_mask")
_LABEL_ARGS = ("labels", "next_sentence_label", "start_positions", "end_positions")


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


def _named_variables(obj, kinds, prefix: str = ""):
    """Yield ``(scheme path, variable)`` by walking public attributes: sub-layers, lists of them, variables."""
    for name, value in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(value, keras.Variable):
            yield prefix + name, value
        elif isinstance(value, kinds):
            yield from _named_variables(value, kinds, f"{prefix}{name}/")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], kinds):
            for i, item in enumerate(value):
                yield from _named_variables(item, kinds, f"{prefix}{name}/{i}/")


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


def _linear(x, kernel, bias=None):
    """(..., in) @ (in, out) [+ (out,)] -> (..., out), as one 2-D matmul (fastest path, XLA friendly)."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, kernel.shape[0]]), kernel)
    if bias is not None:
        y = y + bias
    return tf.reshape(y, tf.concat([shape[:-1], [kernel.shape[1]]], 0))


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


class Embedding(_Module):
    """ids (...) int -> (..., dim); ``embeddings`` (rows, dim)."""

    def __init__(self, config, rows: int, dim: int, dtype=None, name=None):
        super().__init__(config, dtype, name)
        self.embeddings = self.weight("embeddings", (rows, dim))
        self.built = True

    def call(self, ids):
        return _gather(tf.convert_to_tensor(self.embeddings), ids)


def _recompute(block, hidden, kw):
    """Gradient checkpointing: ``block`` re-runs in the backward pass (``tf.recompute_grad``) instead of
    keeping its activations. Its outputs travel as a flat list of tensors; None entries are put back."""
    template = {}

    def run(h):
        out = block(h, **kw)
        leaves = tf.nest.flatten(out)
        template["out"], template["keep"] = out, [x is not None for x in leaves]
        return [x for x in leaves if x is not None]

    values = iter(tf.recompute_grad(run)(hidden))
    leaves = [next(values) if keep else None for keep in template["keep"]]
    return tf.nest.pack_sequence_as(template["out"], leaves)


def check_eager(self, input_ids, kwargs):
    """``bert_common.validation`` on concrete inputs (NumPy, lists or eager tensors): call arguments,
    labels, then the inputs as the encoder sees them."""
    a = _unpack_inputs(input_ids, {k: v for k, v in kwargs.items() if k != "training"})
    with warnings.catch_warnings():  # the deprecation warning is given once, by _prepare
        warnings.simplefilter("ignore", FutureWarning)
        a = semantics.check_call_args(self.model_class, a)
    arr = {k: None if a.get(k) is None else np.asarray(a[k]) for k in _INT_ARGS}
    for k in ("inputs_embeds", "encoder_hidden_states"):
        arr[k] = None if a.get(k) is None else tuple(np.shape(a[k]))
    lead = arr["input_ids"].shape if arr["input_ids"] is not None else (arr["inputs_embeds"] or (0,))[:-1]
    labels = {k: np.asarray(a[k]) for k in _LABEL_ARGS if a.get(k) is not None}
    if labels and semantics.has_loss(self.model_class, labels):
        problem = None
        if self.model_class == "BertForSequenceClassification":
            problem = semantics.problem_type(self.config, np.issubdtype(labels["labels"].dtype, np.integer))
        check_labels(self.config, self.model_class, labels, lead, problem)
    if self.model_class == "BertForMultipleChoice":
        _, plan = semantics.choice_plan({k: None if a.get(k) is None else np.shape(a[k])
                                         for k in semantics.CHOICE_RANKS})
        arr.update({k: arr[k].reshape(plan[k]) for k in plan if k in _INT_ARGS})
        if "inputs_embeds" in plan:
            arr["inputs_embeds"] = plan["inputs_embeds"]
    past = a.get("past_key_values")
    # A cache or encoder states with varlen: raised here, before Keras would rewrite the error.
    semantics.varlen_mode(self.config, True, False, a)
    check_inputs(self.config, input_ids=arr["input_ids"], token_type_ids=arr["token_type_ids"],
                 position_ids=arr["position_ids"], attention_mask=arr["attention_mask"],
                 inputs_embeds_shape=arr["inputs_embeds"],
                 past_length=0 if past is None else int(np.shape(past[0][0])[2]),
                 encoder_hidden_shape=arr["encoder_hidden_states"],
                 encoder_attention_mask=arr["encoder_attention_mask"],
                 packed=semantics.packed_rows(self.config, arr["position_ids"]))



def compiled(self, options: dict):
    """An XLA-compiled forward (``tf.function(jit_compile=True)``) for untrusted inputs: each call
    first validates the concrete inputs on the host (the eager ``ValueError``), then runs the compiled
    function. ``options`` are fixed call flags (``output_hidden_states=True``, ``training=False`` ...);
    the returned callable takes the array inputs as keywords (NumPy or tensors) and retraces per shape.
    A user's own ``tf.function(jit_compile=True)`` cannot raise: a bad id or mask value there makes the
    outputs NaN instead (``bert_tf._graph.poison``)."""
    xla = tf.function(lambda inputs: self(**inputs, **options), jit_compile=True)

    def run(input_ids=None, **inputs):
        inputs = {k: v for k, v in {"input_ids": input_ids, **inputs}.items() if v is not None}
        check_eager(self, inputs.pop("input_ids", None), inputs)
        return xla({k: _to_tensor(v) for k, v in {"input_ids": input_ids, **inputs}.items() if v is not None})

    return run



class KerasHooks:
    """Keras training hooks of every model: ``fit`` on the model's own loss, ``predict`` without it."""

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

