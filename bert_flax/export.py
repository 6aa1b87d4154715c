"""StableHLO export of a ``bert_flax`` model (``bertrio export --to stablehlo``; see docs/export.md).

``jax.export`` lowers the model's pure ``apply`` with the weights closed over as constants, over symbolic
``batch_size``, ``sequence_length`` (at most ``max_position_embeddings``) and ``num_choices`` dimensions, and
serialises it to ``OUT/model.stablehlo``. Any JAX process reads it back with ``jax.export.deserialize`` and
calls it with int32 ids; the result is a dict of the head's output fields. No bertrio, Flax or model code is
needed.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

FILE = "model.stablehlo"
PLATFORMS = ("cpu",)


def export(model, path: str | os.PathLike, spec: Mapping, *, platforms=PLATFORMS) -> dict:
    """Write ``path/model.stablehlo`` for ``model`` (a ``bert_flax`` model, any head and dtype).

    ``spec`` (``bert_common.cli.export.artifact_spec``): ``inputs`` {name: axis names}, ``input_dtype``
    (int32) and ``outputs``. ``platforms``: the lowering targets ("cpu", "cuda", "tpu"). Returns {"file",
    "outputs", "platforms", "jax"} for the sidecar.
    """
    names = list(spec["inputs"])
    axes = spec["inputs"][names[0]]
    # The bound lets shape checks (sequence length <= max positions) decide at trace time, and the
    # deserialised module refuses longer inputs.
    limit = f"sequence_length <= {model.config.max_position_embeddings}"
    dims = dict(zip(axes, jax.export.symbolic_shape(", ".join(axes), constraints=[limit])))
    int_dtype = jnp.dtype(spec["input_dtype"])
    args = [jax.ShapeDtypeStruct(tuple(dims[a] for a in spec["inputs"][n]), int_dtype) for n in names]
    probe = {n: np.ones((1,) * (len(axes) - 1) + (4,), np.int32) for n in names}
    present = model.apply(model.params, **probe, check="off")
    outputs = [k for k in spec["outputs"] if present.get(k) is not None]
    params = model.params

    def serve(*inputs):
        # Range checks are host callbacks, which a serialised module cannot carry: check="off".
        out = model.apply(params, **dict(zip(names, inputs)), check="off")
        return {k: out[k] for k in outputs}

    exported = jax.export.export(jax.jit(serve), platforms=tuple(platforms))(*args)
    with open(os.path.join(os.fspath(path), FILE), "wb") as f:
        f.write(exported.serialize())
    return {"file": FILE, "outputs": outputs, "platforms": list(platforms), "jax": jax.__version__}


__all__ = ["export", "FILE", "PLATFORMS"]
