"""What the exported-artifact adapters (``onnx``, ``saved_model``, ``stablehlo``) share.

An artifact adapter is a backend for the suite that runs a file written by ``bertrio export`` in its own
runtime (ONNX Runtime, TensorFlow's SavedModel loader, ``jax.export.deserialize``), never through bertrio's
model code. ``build`` exports the case's weights from the source backend into a temp directory and loads
that; after ``use_artifact(DIR)`` (``bertrio parity --artifact DIR``, run by ``bertrio export`` before it
reports success) it loads DIR instead, after checking that DIR holds the case's head and dtype.

Artifacts serve inference only: ``CHECKS`` lists the suite checks they take part in (``forward``, which
in a half dtype compares against the fp32 reference); their outputs are the fields named in the sidecar
(``export.json``), so a pair with an artifact compares exactly those (``output_keys``).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Mapping

import numpy as np

CHECKS = ("forward",)
# The source adapters' handles: the model itself, except the TF adapter's {"model", "device"} dict.
_MODEL_OF_HANDLE = {"tf": lambda h: h["model"]}
# format -> artifact directory registered by use_artifact (one per format per process).
_given: dict[str, str] = {}


@dataclasses.dataclass
class Handle:
    """A loaded artifact: its directory, sidecar and the runtime object (session, signature, function)."""
    path: str
    sidecar: dict
    runtime: Any
    keep: Any = None   # the TemporaryDirectory of a freshly exported artifact (removed with the handle)


def use_artifact(path: str) -> str:
    """Make the adapter of the artifact's format load ``path`` in ``build``; returns the format name."""
    from bert_common.cli.export import read_sidecar
    fmt = read_sidecar(path)["format"]
    _given[fmt] = os.path.abspath(path)
    return fmt


def clear_artifacts() -> None:
    _given.clear()


def artifact_for(fmt: str, model_class: str, config, state: Mapping[str, np.ndarray], dtype: str, load) -> Handle:
    """The registered artifact of ``fmt`` (checked against the case), or a fresh export of ``state``
    from the format's source backend; ``load(path, sidecar)`` opens it in the runtime."""
    from bert_common.cli.export import FORMATS, export_artifact, read_sidecar
    if fmt in _given:
        path = _given[fmt]
        sidecar = read_sidecar(path)
        if sidecar["head"] != model_class or sidecar.get("dtype", "float32") != dtype:
            raise ValueError(f"artifact {path} holds {sidecar['head']} in {sidecar.get('dtype')}; the check "
                             f"asks for {model_class} in {dtype}")
        return Handle(path, sidecar, load(path, sidecar))
    from conformance.suite import adapter
    source = FORMATS[fmt]["backend"]
    handle = adapter(source).build(model_class, config, state, dtype=dtype)
    model = _MODEL_OF_HANDLE.get(source, lambda h: h)(handle)
    keep = tempfile.TemporaryDirectory(prefix=f"bertrio-{fmt}-")
    sidecar = export_artifact(model, keep.name, fmt, dtype=dtype)
    return Handle(keep.name, sidecar, load(keep.name, sidecar), keep)


def feed(sidecar: Mapping, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The artifact's inputs from a case's inputs: ids and masks in the artifact's integer dtype; a missing
    ``token_type_ids`` is zeros and a missing ``attention_mask`` ones, as the models default them.
    Labels and other keys are not artifact inputs and are dropped."""
    ids = np.asarray(inputs["input_ids"])
    defaults = {"token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
    out = {}
    for name, spec in sidecar["inputs"].items():
        value = inputs.get(name, defaults.get(name))
        if value is None:
            raise ValueError(f"the artifact needs input {name!r}")
        out[name] = np.ascontiguousarray(np.asarray(value).astype(spec["dtype"]))
    return out


def check_inference(fmt: str, train: bool, use_cache, past_key_values) -> None:
    if train or use_cache or past_key_values is not None:
        raise ValueError(f"{fmt} artifacts run inference only (train=False, no cache); got train={train}, "
                         f"use_cache={use_cache}, past_key_values={'given' if past_key_values is not None else None}")


def flat(names, arrays) -> dict[str, np.ndarray]:
    """Named outputs in fp32 (the suite's flat dict)."""
    return {n: np.asarray(a).astype(np.float32) for n, a in zip(names, arrays)}


def output_keys(handle: Handle) -> list[str]:
    """The output fields this artifact computes: what a pair with it compares."""
    return list(handle.sidecar["outputs"])
