"""Conformance adapter for ``bert_tf`` (TensorFlow 2 + Keras 3); interface in ``conformance/adapters/__init__.py``.

Everything crossing this boundary is NumPy: canonical state dicts in, flat ``{name: float32 array}`` out.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import numpy as np

NAME = "tf"
# adapter dtype -> Keras dtype policy: weights and matmuls in half precision, softmax/LayerNorm in fp32.
_POLICIES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))


def _tf():
    import tensorflow as tf
    return tf


def devices() -> list[str]:
    return ["cpu"] + (["gpu"] if _tf().config.list_physical_devices("GPU") else [])


def pin_tf32_off() -> str:
    _tf().config.experimental.enable_tensor_float_32_execution(False)
    return "tf.config.experimental.enable_tensor_float_32_execution(False)"


def _device(device: str) -> str:
    return {"cpu": "/CPU:0", "gpu": "/GPU:0"}[device]


def build(model_class: str, config, state: Mapping[str, np.ndarray], dtype: str = "float32", device: str = "cpu"):
    """A ``bert_tf`` model of ``model_class`` holding exactly ``state`` (canonical names, fp32)."""
    import bert_tf.modeling as m
    if dtype not in _POLICIES:
        raise ValueError(f"dtype={dtype!r} is not one of {list(_POLICIES)}")
    prefix = "" if model_class == "BertModel" else "bert."
    pooler = any(k.startswith(prefix + "pooler.") for k in state)
    with _tf().device(_device(device)):
        model = m.MODEL_CLASSES[model_class](config, add_pooling_layer=pooler, dtype=_POLICIES[dtype], _init=False)
        model.load_canonical_state_dict(state)
    return {"model": model, "device": device}


def flatten(out: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested outputs -> ``{"last_hidden_state": a, "hidden_states.0": a, "past_key_values.0.1": a, ...}`` fp32."""
    flat: dict[str, np.ndarray] = {}
    items = out.items() if isinstance(out, Mapping) else enumerate(out)
    for key, value in items:
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = np.asarray(_tf().cast(value, "float32"))
    return flat


def forward(handle, inputs: Mapping[str, np.ndarray], output_hidden_states: bool = True,
            output_attentions: bool = True, use_cache=None, past_key_values=None, train: bool = False
            ) -> dict[str, np.ndarray]:
    model = handle["model"]
    kwargs = dict(inputs)
    if model.config.is_decoder or use_cache:
        kwargs["use_cache"] = use_cache
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    with _tf().device(_device(handle["device"])):
        out = model(**kwargs, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                    training=train)
    return flatten(out)


def grads(handle, inputs: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and d loss / d parameter for every canonical parameter (kernels transposed back), fp32."""
    from bert_common.pretrained import canonical_from_backend
    tf = _tf()
    model = handle["model"]
    variables = model.named_variables()
    with tf.device(_device(handle["device"])):
        with tf.GradientTape() as tape:
            loss = model(**inputs, training=False).loss
        g = tape.gradient(loss, list(variables.values()))
    tensors = {p: np.zeros(v.shape, np.float32) if gi is None else np.asarray(tf.cast(tf.convert_to_tensor(gi), "float32"))
               for (p, v), gi in zip(variables.items(), g)}
    return float(loss), canonical_from_backend(tensors, model.config, model.model_class, "tf", model.add_pooling_layer)


def adamw_step(handle, inputs: Mapping[str, np.ndarray], lr: float = 1e-3, weight_decay: float = 0.01,
               betas=(0.9, 0.999), eps: float = 1e-6) -> dict[str, np.ndarray]:
    """One step of ``bert_tf.training.AdamW`` (the optimizer the TF trainer uses: torch.optim.AdamW's update
    as a Keras optimizer, no clipping here); no decay on biases / LayerNorm (``no_weight_decay``).

    Not ``keras.optimizers.AdamW``: it adds eps to the uncorrected sqrt(v), and takes the bias correction
    ``1 - beta2^t`` from ``float32(beta2)`` while its moment update uses ``1 - beta2`` from the float64
    value, a 1.29e-5 relative disagreement for beta2 = 0.999 that moves every step 6.4e-6 relative off
    the float64 truth (docs/tolerances.md).
    """
    from bert_common.weights import no_weight_decay, scheme_path
    from bert_tf.training import AdamW
    tf = _tf()
    model = handle["model"]
    variables = model.named_variables()
    opt = AdamW(learning_rate=lr, weight_decay=weight_decay, beta_1=betas[0], beta_2=betas[1], epsilon=eps,
                global_clipnorm=None)
    by_path = {scheme_path(name, "tf")[0]: name for name in model.canonical_state_dict()}
    opt.exclude_from_weight_decay(var_list=[v for p, v in variables.items() if no_weight_decay(by_path[p])])
    with tf.device(_device(handle["device"])):
        with tf.GradientTape() as tape:
            loss = model(**inputs, training=False).loss
        var_list = list(variables.values())
        # Dense gradients: embedding lookups give IndexedSlices, which Keras applies as a sparse update.
        # A variable the loss does not reach (None) steps with a zero gradient, as in torch/optax here.
        grads_ = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                  for g, v in zip(tape.gradient(loss, var_list), var_list)]
        opt.apply_gradients(zip(grads_, var_list))
    return model.canonical_state_dict()


def trains(model_class: str) -> bool:
    """Whether ``bert_tf.training.Trainer`` has a loss for ``model_class`` (the train check)."""
    from bert_tf.training import LOSSES
    return model_class in LOSSES


def train(model_class: str, config, state: Mapping[str, np.ndarray], batches, args, dtype: str = "float32",
          device: str = "cpu") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``bert_tf.training.Trainer`` run on ``batches`` (one update each) with ``args``: (loss of every
    update (T,) float64, final canonical fp32 weights)."""
    from bert_tf.training import Trainer
    if dtype != "float32":
        raise ValueError(f"dtype={dtype!r}: the train check runs the TF trainer in 'float32'")
    handle = build(model_class, config, state, dtype=dtype, device=device)
    with _tf().device(_device(device)):
        trainer = Trainer(handle["model"], args)
        losses = np.asarray([trainer.step(b) for b in batches], np.float64)
        params = trainer.get_state().params
    return losses, {k: np.asarray(v, np.float32) for k, v in params.items()}
