"""Conformance adapter for the Hugging Face oracle: transformers' PyTorch BERT classes (test-only).

Same interface as the backend adapters (``conformance/adapters/__init__.py``). The oracle is built from
the same canonical state dict the backends load (canonical names *are* HF PyTorch names), with
``attn_implementation="eager"`` so attention maps are returned without a fallback. Its cache
(``EncoderDecoderCache``) is converted to and from the legacy tuple layout of the cache protocol.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import numpy as np

from conformance.adapters.torch import _from_numpy, _past, _to_numpy, devices, flatten, pin_tf32_off  # noqa: F401
from conformance.adapters.torch import torch_dtype
from conformance.adapters.torch import forward as _torch_forward

NAME = "hf"
# HF's own tensors that are views of canonical ones (tied) or buffers; absent from canonical state dicts.
_HF_ONLY = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "embeddings.position_ids",
            "embeddings.token_type_ids")


def available() -> bool:
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


def hf_config(config, attn_implementation: str = "eager"):
    """``bert_common.BertConfig`` -> ``transformers.BertConfig`` with the same fields."""
    import transformers
    d = config.to_dict()
    d.pop("attn_implementation", None)
    cfg = transformers.BertConfig(**d)
    cfg._attn_implementation = attn_implementation
    return cfg


def build(model_class: str, config, state: Mapping[str, np.ndarray], dtype: str = "float32", device: str = "cpu",
          attn_implementation: str = "eager"):
    """The transformers class named ``model_class`` holding ``state``; every canonical tensor must be used
    and every HF parameter filled (tied aliases and buffers excepted)."""
    import torch
    import transformers
    from bert_common.weights import canonical_shapes
    cls = getattr(transformers, model_class)
    model = cls(hf_config(config, attn_implementation))
    shapes = canonical_shapes(config, model_class)
    if set(state) != set(shapes):
        raise ValueError(f"state does not match {model_class}: missing {sorted(set(shapes) - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - set(shapes))[:5]}")
    tensors = {k: _from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    unfilled = [k for k in result.missing_keys if not k.endswith(_HF_ONLY)]
    if unfilled or result.unexpected_keys:
        raise ValueError(f"HF {model_class} not filled: missing {unfilled}, unexpected {result.unexpected_keys}")
    model.eval()
    return model.to(device=torch.device("cuda" if device == "gpu" else "cpu"), dtype=torch_dtype(dtype))


def _inputs(model, inputs: Mapping[str, Any]) -> dict:
    import torch
    out = {}
    for k, v in inputs.items():
        a = np.asarray(v)
        t = _from_numpy(a)
        # Float labels stay fp32 (HF's convention), except in the float64 truth mode.
        keep = k == "labels" and model.dtype != torch.float64
        t = t.long() if np.issubdtype(a.dtype, np.integer) else (t if keep else t.to(model.dtype))
        out[k] = t.to(model.device)
    return out


def hf_cache(model, past):
    """Legacy tuple (NumPy or torch) -> ``EncoderDecoderCache``."""
    from transformers.cache_utils import EncoderDecoderCache
    if past is None:
        return None
    return EncoderDecoderCache.from_legacy_cache(_past(model, past))


def forward(handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False) -> dict[str, np.ndarray]:
    return _torch_forward(handle, inputs, output_hidden_states, output_attentions, use_cache, past_key_values,
                          train, to_inputs=_inputs, to_cache=hf_cache)


def _canonical_params(handle):
    """(canonical name, parameter) pairs; tied HF aliases appear once under their canonical name."""
    return [(n, p) for n, p in handle.named_parameters() if not n.endswith(_HF_ONLY)]


def grads(handle, inputs) -> tuple[float, dict[str, np.ndarray]]:
    handle.zero_grad(set_to_none=True)
    out = handle(**_inputs(handle, inputs), return_dict=True)
    if out.get("loss") is None:
        raise ValueError("grads needs labels in inputs (the model returned no loss)")
    out.loss.backward()
    g = {n: (np.zeros(tuple(p.shape), np.float32) if p.grad is None else _to_numpy(p.grad))
         for n, p in _canonical_params(handle)}
    handle.zero_grad(set_to_none=True)
    return float(out.loss.detach()), g


def adamw_step(handle, inputs, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6) -> dict[str, np.ndarray]:
    import torch
    from bert_common.weights import no_weight_decay
    named = _canonical_params(handle)
    groups = [{"params": [p for n, p in named if not no_weight_decay(n)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if no_weight_decay(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    handle.eval()  # deterministic step: dropout off, as in the other adapters (checkpoint configs keep 0.1)
    opt.zero_grad(set_to_none=True)
    out = handle(**_inputs(handle, inputs), return_dict=True)
    out.loss.backward()
    for _, p in named:  # a parameter the loss does not reach steps with a zero gradient, as in optax/Keras
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    return {n: _to_numpy(p) for n, p in _canonical_params(handle)}
