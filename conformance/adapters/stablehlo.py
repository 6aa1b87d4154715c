"""Conformance adapter for StableHLO artifacts (``bertrio export --to stablehlo``).

An inference-only backend (``CHECKS``: forward, in fp32 or a half dtype): ``build`` exports the case from the
Flax backend and calls the module ``jax.export.deserialize`` reads back from the file, never bertrio's Flax
model; see ``conformance/adapters/artifact.py``.
"""
from __future__ import annotations

import importlib.util
import os

from conformance.adapters.artifact import CHECKS, Handle, artifact_for, check_inference, feed, flat, output_keys

NAME = "stablehlo"
__all__ = ["NAME", "CHECKS", "available", "devices", "pin_tf32_off", "build", "load", "forward", "output_keys"]


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("jax", "flax"))


def devices() -> list[str]:
    import jax
    return ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) else [])


def pin_tf32_off() -> str:
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    return "stablehlo: jax_default_matmul_precision='highest'"


def _deserialize(path: str, sidecar: dict):
    import jax
    with open(os.path.join(path, sidecar["file"]), "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def load(path: str, sidecar: dict | None = None) -> Handle:
    """Open an artifact directory written by ``bertrio export --to stablehlo``."""
    from bert_common.cli.export import read_sidecar
    sidecar = sidecar or read_sidecar(path)
    return Handle(os.path.abspath(path), sidecar, _deserialize(path, sidecar))


def build(model_class: str, config, state, dtype: str = "float32", device: str = "cpu") -> Handle:
    """The case exported to StableHLO from the Flax backend (or the artifact given to ``use_artifact``)."""
    return artifact_for(NAME, model_class, config, state, dtype, _deserialize)


def forward(handle: Handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict:
    """The module's outputs (fp32) for the case's inputs; hidden states and attentions are not exported."""
    check_inference(NAME, train, use_cache, past_key_values)
    fed = feed(handle.sidecar, inputs)
    out = handle.runtime.call(*(fed[n] for n in handle.sidecar["inputs"]))
    names = handle.sidecar["outputs"]
    return flat(names, [out[n] for n in names])
