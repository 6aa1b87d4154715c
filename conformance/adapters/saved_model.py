"""Conformance adapter for SavedModel artifacts (``bertrio export --to saved-model``), backend name
``saved-model``.

An inference-only backend (``CHECKS``: forward, in fp32 or a half dtype): ``build`` exports the case from the
TF backend and calls the reloaded ``serving_default`` signature (``tf.saved_model.load``), never bertrio's
Keras model; see ``conformance/adapters/artifact.py``.
"""
from __future__ import annotations

import importlib.util
import os

from conformance.adapters.artifact import CHECKS, Handle, artifact_for, check_inference, feed, flat, output_keys

NAME = "saved-model"
__all__ = ["NAME", "CHECKS", "available", "devices", "pin_tf32_off", "build", "load", "forward", "output_keys"]


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))


def devices() -> list[str]:
    import tensorflow as tf
    return ["cpu"] + (["gpu"] if tf.config.list_physical_devices("GPU") else [])


def pin_tf32_off() -> str:
    import tensorflow as tf
    tf.config.experimental.enable_tensor_float_32_execution(False)
    return "saved-model: tf.config.experimental.enable_tensor_float_32_execution(False)"


def _signature(path: str, sidecar: dict):
    """(loaded object, its serving_default function); the object must outlive the function."""
    import tensorflow as tf
    loaded = tf.saved_model.load(os.path.join(path, sidecar["file"]))
    fn = loaded.signatures["serving_default"]
    names = sorted(fn.structured_outputs)
    if names != sorted(sidecar["outputs"]):
        raise ValueError(f"{path}: serving_default returns {names}, the sidecar lists {sidecar['outputs']}")
    return loaded, fn


def load(path: str, sidecar: dict | None = None) -> Handle:
    """Open an artifact directory written by ``bertrio export --to saved-model``."""
    from bert_common.cli.export import read_sidecar
    sidecar = sidecar or read_sidecar(path)
    return Handle(os.path.abspath(path), sidecar, _signature(path, sidecar))


def build(model_class: str, config, state, dtype: str = "float32", device: str = "cpu") -> Handle:
    """The case exported to a SavedModel from the TF backend (or the artifact given to ``use_artifact``)."""
    return artifact_for(NAME, model_class, config, state, dtype, _signature)


def forward(handle: Handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict:
    """The signature's outputs (fp32) for the case's inputs; hidden states and attentions are not exported."""
    import tensorflow as tf
    check_inference(NAME, train, use_cache, past_key_values)
    _, fn = handle.runtime
    out = fn(**{k: tf.constant(v) for k, v in feed(handle.sidecar, inputs).items()})
    names = handle.sidecar["outputs"]
    return flat(names, [out[n].numpy() for n in names])
