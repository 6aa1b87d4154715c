"""PyTorch plumbing kept out of ``modeling.py``: dtype names, NumPy-to-tensor conversion, the host-side
input checks that ``torch.compile`` must not trace (they look at concrete values), and construction on the
meta device. None of it imports ``torch._dynamo`` before something is compiled (see ``eager_only``)."""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from bert_common.config import BertConfig
from bert_common.validation import check_inputs, check_labels

# Names accepted wherever a dtype is (``from_pretrained(dtype=...)``, adapters).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "float64": torch.float64}  # float64: the reference the parity suite calibrates on
HALF = (torch.float16, torch.bfloat16)


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """``None`` | torch dtype | name in ``DTYPES`` -> torch dtype (or None). Raises ValueError otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in (torch.float32,) + HALF:
            raise ValueError(f"dtype={dtype} is not supported; use one of float32, bfloat16, float16")
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)} or a torch floating dtype")


def as_tensor(x: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """NumPy arrays (and lists) -> tensors on ``device``: integers as int64, floats as ``float_dtype``."""
    if x is None or isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return torch.from_numpy(a.astype(np.int64)).to(device)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device=device, dtype=float_dtype)


def as_labels(x: Any, device: torch.device) -> Any:
    """Labels keep their kind: integer -> int64, float -> float32 (regression, multi-label)."""
    return as_tensor(x, device, torch.float32)


def _host(x: torch.Tensor | None) -> np.ndarray | None:
    if x is None:
        return None
    x = x.detach().cpu()
    return (x.float() if x.dtype in HALF else x).numpy()


def eager_only(fn: Callable) -> Callable:
    """``torch.compiler.disable`` (Dynamo never traces ``fn``; a compiled forward calls it eagerly, across a
    graph break) without importing Dynamo: ``torch.compiler.disable`` imports ``torch._dynamo`` when it
    decorates, ~2.4 s, as long as ``import torch`` itself. Outside a compile ``fn`` is called directly:
    ``torch.compiler.is_compiling()`` is a plain flag read, and nothing can be compiling before Dynamo is
    imported. While Dynamo traces (the flag folds to True) the call goes to ``torch._disable_dynamo(fn)``,
    PyTorch's own lazily-importing form of the same decorator, which Dynamo skips, so ``fn`` runs eagerly
    exactly as under ``torch.compiler.disable`` (same graphs, same one break per call site)."""
    disabled = torch._disable_dynamo(fn)  # builds a wrapper; imports Dynamo only when that wrapper is called

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)
    return call


@eager_only  # data-dependent checks run eagerly; the rest of the forward still compiles
def validate(config: BertConfig, input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds,
             past_length: int, encoder_hidden_states, encoder_attention_mask, packed: bool = False) -> None:
    if torch.compiler.is_exporting():  # symbolic shapes have no values to check; the artifact's runtime checks
        return
    check_inputs(config, input_ids=_host(input_ids), token_type_ids=_host(token_type_ids),
                 position_ids=_host(position_ids), attention_mask=_host(attention_mask),
                 inputs_embeds_shape=None if inputs_embeds is None else tuple(inputs_embeds.shape),
                 past_length=past_length,
                 encoder_hidden_shape=None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape),
                 encoder_attention_mask=_host(encoder_attention_mask), packed=packed)


@eager_only
def validate_labels(config: BertConfig, model_class: str, labels: dict, input_shape, problem=None) -> None:
    check_labels(config, model_class, {k: _host(v) for k, v in labels.items()}, input_shape, problem)


@eager_only
def all_ones(mask: torch.Tensor) -> bool:
    return bool(mask.all())


class _SkipMetaInit(TorchFunctionMode):
    """Returns meta tensors from ``torch.nn.init`` functions untouched. Layer constructors still call them
    under ``torch.device("meta")``; on meta tensors they run PyTorch's Python reference kernels, whose
    wrappers import Dynamo (~2.4 s) on first use, to compute nothing (meta tensors hold no values)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """``torch.device("meta")`` without the random init the layers' constructors would run: modules built
    inside hold meta parameters (no storage) to be materialised with ``materialize`` and filled by the caller."""
    with torch.device("meta"), _SkipMetaInit():
        yield


def materialize(module: torch.nn.Module, device: str = "cpu") -> None:
    """Give every meta parameter and buffer of ``module`` uninitialised storage on ``device`` (what
    ``Module.to_empty`` does, but with ``torch.empty`` instead of ``empty_like`` on meta tensors, whose
    reference kernel imports sympy). Tied parameters come apart, as with ``to_empty``: re-tie after."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta:
                m._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                         requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
