"""Conformance adapter for ``bert_torch`` (interface: ``conformance/adapters/__init__.py``).

NumPy in, flat NumPy dicts out; the suite imports no framework. ``flatten`` is shared with the HF oracle
adapter (``conformance/adapters/hf.py``), so both name every tensor the same way.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import numpy as np

NAME = "torch"


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def devices() -> list[str]:
    import torch
    return ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])


def pin_tf32_off() -> str:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return ("torch: backends.cuda.matmul.allow_tf32=False, backends.cudnn.allow_tf32=False, "
            "float32_matmul_precision='highest'")


def _to_numpy(x) -> np.ndarray:
    """A tensor -> NumPy: float64 stays float64 (the truth runs), every other float dtype becomes float32."""
    import torch
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x if x.dtype == torch.float64 else x.float()).cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _from_numpy(a: np.ndarray):
    """NumPy -> CPU tensor without torch's "array is not writable" warning (file buffers are read-only)."""
    import torch
    a = np.asarray(a)
    return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C"))


def torch_dtype(dtype: str):
    """Adapter dtype name -> torch dtype; "float64" is the truth mode (``conformance.suite``)."""
    import torch
    from bert_torch.modeling import resolve_dtype
    return torch.float64 if dtype == "float64" else resolve_dtype(dtype)


def flatten(out: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Model output -> ``{"logits": a, "hidden_states.0": a, "past_key_values.0.1": a, ...}`` in fp32."""
    from conformance.compare import flatten_outputs
    return flatten_outputs(out, _to_numpy)


def _device(device: str):
    import torch
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device={device!r} is not one of ['cpu', 'gpu']")
    return torch.device("cuda" if device == "gpu" else "cpu")


def build(model_class: str, config, state: Mapping[str, np.ndarray], dtype: str = "float32", device: str = "cpu"):
    """A ``bert_torch`` model of ``model_class`` holding ``state`` (canonical fp32), in eval mode.

    Attention runs eager unless the config names an implementation: the suite requests attention maps, which SDPA cannot return (it would fall back
    with a warning), and the fp32 run and its float64 truth must take the same path. ``dtype="float64"``
    is the truth mode the suite measures fp32 rounding noise against."""
    from bert_torch.modeling import build as _build
    if config.attn_implementation is None:  # a config that names one (a test of the fused path) keeps it
        config = config.replace(attn_implementation="eager")
    model = _build(model_class, config, state)
    return model.to(device=_device(device), dtype=torch_dtype(dtype))


def _inputs(model, inputs: Mapping[str, Any]) -> dict:
    """NumPy -> tensors on the model's device (integers int64; floats in the model dtype, labels fp32)."""
    import torch
    out = {}
    for k, v in inputs.items():
        a = np.asarray(v)
        t = _from_numpy(a)
        if np.issubdtype(a.dtype, np.integer):
            t = t.long()
        elif k not in ("labels",) or model.dtype == torch.float64:  # float labels stay fp32, except in truth mode
            t = t.to(model.dtype)
        out[k] = t.to(model.device)
    return out


def _past(model, past):
    import torch
    if past is None:
        return None
    return tuple(tuple(_from_numpy(a).to(model.device, model.dtype) for a in layer)
                 for layer in past)


def forward(handle, inputs, output_hidden_states=True, output_attentions=True, use_cache=None,
            past_key_values=None, train=False, *, to_inputs=None, to_cache=None) -> dict[str, np.ndarray]:
    """``to_inputs`` / ``to_cache`` let the HF-oracle adapter reuse this with its own conversions."""
    import torch
    handle.train(train)
    kwargs = (to_inputs or _inputs)(handle, inputs)
    if use_cache is not None:
        kwargs["use_cache"] = use_cache
    if past_key_values is not None:
        kwargs["past_key_values"] = (to_cache or _past)(handle, past_key_values)
    with torch.no_grad():
        out = handle(**kwargs, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                     return_dict=True)
    handle.eval()
    return flatten(out)


def grads(handle, inputs) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and d loss / d parameter per canonical name (fp32)."""
    handle.zero_grad(set_to_none=True)
    out = handle(**_inputs(handle, inputs), return_dict=True)
    if out.get("loss") is None:
        raise ValueError("grads needs labels in inputs (the model returned no loss)")
    out.loss.backward()
    g = {}
    for name, p in handle.named_parameters():
        g[name] = np.zeros(tuple(p.shape), np.float32) if p.grad is None else _to_numpy(p.grad)
    handle.zero_grad(set_to_none=True)
    return float(out.loss.detach()), g


def adamw_step(handle, inputs, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6) -> dict[str, np.ndarray]:
    """One ``torch.optim.AdamW`` step (no decay on biases and LayerNorm); returns the canonical state."""
    import torch
    from bert_common.weights import no_weight_decay
    named = list(handle.named_parameters())
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
    # The truth mode keeps float64 (dtype=None: the model's own dtype); fp32 runs return fp32.
    return handle.canonical_state_dict(dtype=None if handle.dtype == torch.float64 else "float32")


def trains(model_class: str) -> bool:
    """Whether ``bert_torch.training.Trainer`` has a loss for ``model_class`` (the train check)."""
    from bert_torch.training import LOSSES
    return model_class in LOSSES


def train(model_class: str, config, state: Mapping[str, np.ndarray], batches, args, dtype: str = "float32",
          device: str = "cpu") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``bert_torch.training.Trainer`` run on ``batches`` (one update each; the batch contract of
    ``bert_common.training``) with ``args`` (``TrainingArguments``): (loss of every update (T,) float64,
    final canonical weights). ``dtype="float64"``: the trainer's float64 master weights, the truth of the
    train check. The trainer places the model itself (the GPU when torch sees one)."""
    import torch
    from bert_torch.modeling import build as _build
    from bert_torch.training import Trainer
    if config.attn_implementation is None:  # the same attention path in fp32 and in the float64 truth
        config = config.replace(attn_implementation="eager")
    master = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
    if master is None:
        raise ValueError(f"dtype={dtype!r}: the train check runs in 'float32' (and the 'float64' truth)")
    trainer = Trainer(_build(model_class, config, state), args, master_dtype=master)
    losses = np.asarray([trainer.step(b) for b in batches], np.float64)
    params = trainer.get_state().params
    return losses, {k: (v if dtype == "float64" else np.asarray(v, np.float32)) for k, v in params.items()}
