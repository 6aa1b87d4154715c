"""Conformance adapter for ONNX artifacts run by ONNX Runtime (``bertrio export --to onnx``).

An inference-only backend (``CHECKS``: forward, in fp32 or a half dtype): ``build`` exports the case from the
torch backend and opens it in an ``onnxruntime.InferenceSession`` (CPU); see
``conformance/adapters/artifact.py``.
"""
from __future__ import annotations

import importlib.util
import os

from conformance.adapters.artifact import CHECKS, Handle, artifact_for, check_inference, feed, flat, output_keys

NAME = "onnx"
__all__ = ["NAME", "CHECKS", "available", "devices", "pin_tf32_off", "build", "load", "forward", "output_keys"]


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript", "torch"))


def devices() -> list[str]:
    import onnxruntime as ort
    return ["cpu"] + (["gpu"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])


def pin_tf32_off() -> str:
    return "onnxruntime: sessions on GPU get the CUDA provider option use_tf32=0"


def _session(path: str, sidecar: dict, device: str = "cpu"):
    import onnxruntime as ort
    providers = ([("CUDAExecutionProvider", {"use_tf32": 0})] if device == "gpu" else []) + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the exporter's unused-initializer notes are noise here
    session = ort.InferenceSession(os.path.join(path, sidecar["file"]), options, providers=providers)
    names = [o.name for o in session.get_outputs()]
    if names != list(sidecar["outputs"]):
        raise ValueError(f"{path}: the ONNX graph's outputs {names} are not the sidecar's {sidecar['outputs']}")
    return session


def load(path: str, sidecar: dict | None = None, device: str = "cpu") -> Handle:
    """Open an artifact directory written by ``bertrio export --to onnx``."""
    from bert_common.cli.export import read_sidecar
    sidecar = sidecar or read_sidecar(path)
    return Handle(os.path.abspath(path), sidecar, _session(path, sidecar, device))


def build(model_class: str, config, state, dtype: str = "float32", device: str = "cpu") -> Handle:
    """The case exported to ONNX from the torch backend (or the artifact given to ``use_artifact``)."""
    return artifact_for(NAME, model_class, config, state, dtype, lambda p, s: _session(p, s, device))


def forward(handle: Handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict:
    """The artifact's outputs (fp32) for the case's inputs; hidden states and attentions are not exported."""
    check_inference(NAME, train, use_cache, past_key_values)
    names = handle.sidecar["outputs"]
    return flat(names, handle.runtime.run(names, feed(handle.sidecar, inputs)))
