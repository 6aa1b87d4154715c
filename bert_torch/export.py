"""ONNX export of a ``bert_torch`` model (``bertrio export --to onnx``; see docs/export.md).

Uses the exporter PyTorch recommends for its version: ``torch.onnx.export(..., dynamo=True)``, which
captures the model with ``torch.export`` (non-strict) and translates it with ONNX Script. Batch, sequence
(and choice) axes are symbolic, so one file serves every input shape. The optional ONNX Runtime transformer
fusions (``onnxruntime.transformers.optimizer``, model type ``bert``) rewrite attention, LayerNorm and GELU
into fused kernels.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF

DEFAULT_OPSET = 18   # the dynamo exporter's own opset; asking for less makes it convert versions afterwards
MIN_OPSET = 17       # LayerNormalization is an ONNX op from 17 on
FILE = "model.onnx"


class _Signature(torch.nn.Module):
    """The model behind a fixed positional signature returning a tuple of named outputs: ONNX graphs have
    positional inputs and outputs, named by the exporter from ``spec``."""

    def __init__(self, model: torch.nn.Module, outputs: Sequence[str]):
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)
        # Heads that can cache (a decoder's BertModel, BertLMHeadModel) must not build one in the graph.
        fields = OUTPUT_FIELDS[OUTPUT_OF[model.model_class]]
        self.flags = {"use_cache": False} if "past_key_values" in fields else {}

    def forward(self, input_ids, attention_mask, token_type_ids):
        if self.model.model_class == "BertForMultipleChoice":
            return self._choices(input_ids, attention_mask, token_type_ids)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         return_dict=True, **self.flags)
        return tuple(out[k] for k in self.outputs)

    def _choices(self, input_ids, attention_mask, token_type_ids):
        """(B, C, S) -> logits (B, C), flattening the choices here with symbolic sizes: the model's own
        flattening reads the shape as Python ints, which would fix B and C at trace time. Same computation
        as ``BertForMultipleChoice.forward`` in eval mode (its dropout is the identity)."""
        B, C, S = input_ids.shape
        flat = [x.reshape(B * C, S) for x in (input_ids, attention_mask, token_type_ids)]
        pooled = self.model.bert(*flat, return_dict=True)["pooler_output"]                       # B*C,H
        return (self.model.classifier(pooled).reshape(B, C),)


def _example(spec: Mapping, vocab_size: int) -> dict[str, torch.Tensor]:
    """Example inputs with every symbolic axis >= 2 (torch.export specialises axes of size 0 and 1)."""
    sizes = {"batch_size": 2, "num_choices": 2, "sequence_length": 8}
    rng = np.random.default_rng(0)
    out = {}
    for name, axes in spec["inputs"].items():
        shape = tuple(sizes[a] for a in axes)
        high = vocab_size if name == "input_ids" else 2
        out[name] = torch.from_numpy(rng.integers(0, high, size=shape, dtype=np.int64))
    out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out


def export(model, path: str | os.PathLike, spec: Mapping, *, opset: int | None = None, optimize: bool = False) -> dict:
    """Write ``path/model.onnx`` for ``model`` (a ``bert_torch`` model, any head, fp32/fp16/bf16).

    ``spec`` (``bert_common.cli.export.artifact_spec``): ``inputs`` {name: [axis names]} (int64 tensors
    (B, S), or (B, C, S) for multiple choice) and ``outputs`` (field names; those the model does not
    return, e.g. ``pooler_output`` without a pooler, are left out). ``opset`` >= 17 (default 18).
    ``optimize``: apply ONNX Runtime's BERT fusions in place. Returns {"file", "outputs", "opset",
    "optimized"} for the sidecar.
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset} is below the minimum {MIN_OPSET} (LayerNormalization)")
    model = model.eval()
    example = _example(spec, model.config.vocab_size)
    flags = _Signature(model, spec["outputs"]).flags
    with torch.no_grad():
        probe = model(**example, return_dict=True, **flags)
    outputs = [k for k in spec["outputs"] if probe.get(k) is not None]
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {name: {i: dims.setdefault(a, torch.export.Dim(a)) for i, a in enumerate(axes)}
               for name, axes in spec["inputs"].items()}
    file = os.path.join(os.fspath(path), FILE)
    with warnings.catch_warnings(), torch.no_grad(), _quiet("torch.onnx"):
        # The exporter warns about axis names it merges (every input shares batch_size / sequence_length)
        # and logs every torchvision operator it skips.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Signature(model, outputs), tuple(example[n] for n in spec["inputs"]),
                                    input_names=list(spec["inputs"]), output_names=outputs,
                                    dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False)
    program.save(file)
    if optimize:
        fuse(file, model.config.num_attention_heads, model.config.hidden_size,
             float16=model.dtype == torch.float16)
    return {"file": FILE, "outputs": outputs, "opset": opset, "optimized": bool(optimize)}


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def fuse(file: str, num_heads: int, hidden_size: int, float16: bool = False) -> dict[str, int]:
    """Rewrite ``file`` in place with ONNX Runtime's BERT fusions (attention, skip-LayerNorm, bias-GELU,
    embed-LayerNorm where the graph matches). Returns the fused-operator counts ONNX Runtime reports."""
    from onnxruntime.transformers.optimizer import optimize_model
    fused = optimize_model(file, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                           opt_level=0, use_gpu=False, only_onnxruntime=False)
    if float16:
        fused.convert_float_to_float16(keep_io_types=False)
    fused.save_model_to_file(file)
    return {k: int(v) for k, v in fused.get_fused_operator_statistics().items()}


__all__ = ["export", "fuse", "FILE", "DEFAULT_OPSET", "MIN_OPSET"]
