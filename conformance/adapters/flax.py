"""Conformance adapter for ``bert_flax`` (interface: ``conformance/adapters/__init__.py``).

NumPy in, flat NumPy dicts out; the suite imports no framework. Gradients and the AdamW step use the
model's pure ``apply`` under ``jax.jit``; parameter paths are mapped to canonical names through
``bert_common.pretrained.canonical_from_backend`` (no renaming here).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import numpy as np

NAME = "flax"
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "optax"))


def devices() -> list[str]:
    import jax
    return ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) else [])


def pin_tf32_off() -> str:
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    return "jax: jax_default_matmul_precision='highest' (no TF32 / bf16 passes in fp32 matmuls)"


def flatten(out: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Model output -> ``{"logits": a, "hidden_states.0": a, "past_key_values.0.1": a, ...}`` in fp32."""
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, v) -> None:
        if v is None:
            return
        if isinstance(v, (tuple, list)):
            for i, item in enumerate(v):
                walk(f"{prefix}.{i}", item)
        else:
            flat[prefix] = np.asarray(v, dtype=np.float32)

    for key, value in out.items():
        walk(key, value)
    return flat


def _device(device: str):
    import jax
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device={device!r} is not one of ['cpu', 'gpu']")
    return jax.devices("gpu" if device == "gpu" else "cpu")[0]


def build(model_class: str, config, state: Mapping[str, np.ndarray], dtype: str = "float32", device: str = "cpu"):
    """A ``bert_flax`` model of ``model_class`` holding ``state`` (canonical fp32); weights and compute in
    ``dtype`` (softmax and LayerNorm stay fp32 inside the model)."""
    import jax
    import jax.numpy as jnp

    from bert_flax.modeling import build as _build
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    dt = jnp.dtype(_DTYPES[dtype])
    model = _build(model_class, config, state, dtype=dt, param_dtype=dt)
    model.params = jax.device_put(model.params, _device(device))
    return model


def _inputs(inputs: Mapping[str, Any]) -> dict:
    return {k: np.asarray(v) for k, v in inputs.items()}


def forward(handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict[str, np.ndarray]:
    import jax
    kwargs = _inputs(inputs)
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    out = handle(**kwargs, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                 use_cache=use_cache, return_dict=True, train=train,
                 dropout_rng=jax.random.PRNGKey(0) if train else None)
    return flatten(out)


def _canonical(handle, tree) -> dict[str, np.ndarray]:
    from bert_common.pretrained import canonical_from_backend
    from bert_flax.modeling import _flat
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in _flat(tree).items()}
    return canonical_from_backend(flat, handle.config, handle.model_class, "flax", handle.add_pooling_layer)


def _loss_fn(handle, inputs):
    batch = _inputs(inputs)

    def loss(params):
        out = handle.apply(params, **batch)
        if "loss" not in out:
            raise ValueError("grads needs labels in inputs (the model returned no loss)")
        return out["loss"]
    return loss


def grads(handle, inputs) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and d loss / d parameter per canonical name (fp32)."""
    import jax
    loss, g = jax.jit(jax.value_and_grad(_loss_fn(handle, inputs)))(handle.params)
    return float(loss), _canonical(handle, g)


def adamw_step(handle, inputs, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6) -> dict[str, np.ndarray]:
    """One step of ``bert_flax.training.adamw`` (the Flax trainer's optimizer: ``optax.adamw`` with torch's
    bias correction; optax's own takes ``1 - float32(beta2)^t``, 6.4e-6 relative off the float64 truth per
    step), no decay on biases and LayerNorm; returns the canonical state."""
    import jax
    import optax

    from bert_common.weights import canonical_shapes, no_weight_decay, scheme_path
    from bert_flax.modeling import _nest
    from bert_flax.training import adamw
    # The decay mask is keyed by flax path; the rule (bert_common.weights.no_weight_decay) by canonical name.
    decay = {scheme_path(name, "flax")[0]: not no_weight_decay(name)
             for name in canonical_shapes(handle.config, handle.model_class, handle.add_pooling_layer)}
    opt = adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay, mask=_nest(decay))
    state = opt.init(handle.params)
    g = jax.jit(jax.grad(_loss_fn(handle, inputs)))(handle.params)
    updates, _ = opt.update(g, state, handle.params)
    handle.params = optax.apply_updates(handle.params, updates)
    return handle.canonical_state_dict()


def trains(model_class: str) -> bool:
    """Whether ``bert_flax.training.Trainer`` has a loss for ``model_class`` (the train check)."""
    from bert_flax.training import LOSS_TERMS
    return model_class in LOSS_TERMS


def train(model_class: str, config, state: Mapping[str, np.ndarray], batches, args, dtype: str = "float32",
          device: str = "cpu") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``bert_flax.training.Trainer`` run on ``batches`` (one update each) with ``args``: (loss of every
    update (T,) float64, final canonical fp32 weights). The trainer places the state on its own mesh."""
    from bert_flax.training import Trainer
    if dtype != "float32":
        raise ValueError(f"dtype={dtype!r}: the train check runs the Flax trainer in 'float32'")
    trainer = Trainer(build(model_class, config, state, dtype=dtype, device=device), args)
    losses = np.asarray([trainer.step(b) for b in batches], np.float64)
    return losses, {k: np.asarray(v, np.float32) for k, v in trainer.get_state().params.items()}
