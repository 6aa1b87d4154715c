"""Flatten outputs, restrict them to kept positions, and diff two backends tensor by tensor.

Everything here is NumPy. A *flat* output is ``{path: np.ndarray}`` with paths such as
``last_hidden_state``, ``hidden_states.3``, ``attentions.0``, ``past_key_values.1.2``, ``loss``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from conformance.tolerances import Noise, Tol

# Which axis of a field indexes query positions (compared only where attention_mask == 1).
# Fields not listed, and per-head fields without a token axis (sequence-level logits), are compared whole.
SEQ_AXIS: dict[str, int] = {
    "last_hidden_state": 1, "hidden_states": 1, "attentions": 2, "cross_attentions": 2,
    "prediction_logits": 1, "start_logits": 1, "end_logits": 1,
}
TOKEN_LOGITS = ("BertForMaskedLM", "BertLMHeadModel", "BertForTokenClassification")
# Forward order: hidden_states.i enters layer i, attentions.i / caches of layer i come out of it; then the
# final fields. A report therefore names the *first* tensor on the forward path that went wrong.
LAYERED = {"hidden_states": 0, "attentions": 1, "cross_attentions": 1, "past_key_values": 1}
FINAL_ORDER = ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits", "logits",
               "start_logits", "end_logits", "loss")


def flatten_outputs(out: Any, to_numpy: Callable[[Any], np.ndarray] = np.asarray,
                    prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict / tuple / list of arrays -> ``{dotted path: float32 array}`` (None leaves dropped;
    float64 leaves stay float64).

    ``to_numpy`` converts a framework tensor leaf; a Hugging Face cache object (``to_legacy_cache``) is
    flattened as its legacy tuple, so every adapter names cache tensors ``past_key_values.{layer}.{j}``.
    """
    flat: dict[str, np.ndarray] = {}
    if out is None:
        return flat
    if hasattr(out, "to_legacy_cache"):
        out = out.to_legacy_cache()
    if isinstance(out, Mapping):
        for k, v in out.items():
            flat.update(flatten_outputs(v, to_numpy, f"{prefix}{k}."))
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            flat.update(flatten_outputs(v, to_numpy, f"{prefix}{i}."))
    else:
        arr = np.asarray(to_numpy(out))
        # float64 (the truth runs) stays float64; everything else is compared in float32.
        flat[prefix[:-1]] = arr if arr.dtype == np.float64 else arr.astype(np.float32)
    return flat


def unflatten_cache(flat: Mapping[str, np.ndarray], key: str = "past_key_values") -> tuple | None:
    """``past_key_values.{layer}.{j}`` entries -> tuple over layers of tuples of arrays."""
    layers: dict[int, dict[int, np.ndarray]] = {}
    for path, arr in flat.items():
        m = re.fullmatch(rf"{key}\.(\d+)\.(\d+)", path)
        if m:
            layers.setdefault(int(m.group(1)), {})[int(m.group(2))] = arr
    if not layers:
        return None
    return tuple(tuple(layers[i][j] for j in sorted(layers[i])) for i in sorted(layers))


def field_order(path: str) -> tuple:
    """Sort key giving forward order (see LAYERED / FINAL_ORDER); unknown fields (e.g. grads) keep name order."""
    parts = path.split(".")
    head = parts[0]
    if head in LAYERED and len(parts) > 1 and parts[1].isdigit():
        return (0, 2 * int(parts[1]) + LAYERED[head], path)
    if head in FINAL_ORDER:
        return (1, FINAL_ORDER.index(head), path)
    return (2, 0, path)


def kept(path: str, arr: np.ndarray, mask: np.ndarray | None, model_class: str) -> np.ndarray:
    """The entries of ``arr`` at kept (unpadded) query positions, flattened. ``mask`` (B, S) or (B, C, S)."""
    if mask is None:
        return arr.reshape(-1)
    head = path.split(".")[0]
    axis = SEQ_AXIS.get(head)
    if head == "logits" and model_class in TOKEN_LOGITS:
        axis = 1
    m = np.asarray(mask).reshape(-1, np.shape(mask)[-1]).astype(bool)  # (B', S)
    if axis is None or arr.ndim <= axis or arr.shape[0] != m.shape[0] or arr.shape[axis] != m.shape[1]:
        return arr.reshape(-1)
    moved = np.moveaxis(arr, axis, 1)  # (B', S, ...)
    return moved[m].reshape(-1)


@dataclasses.dataclass
class TensorDiff:
    path: str
    max_abs: float
    ref_max: float
    passed: bool
    first_values: tuple[float, float] | None = None  # (ours, reference) at the first failing position
    note: str = ""
    rel_norm: float = 0.0   # ‖Δ‖₂ / ‖ref‖₂ (reported; the verdict uses the noise ratios)
    rms: float = 0.0        # RMS(Δ)
    noise_rms: float = 0.0  # σ_rms: RMS distance of an implementation in this dtype from the float64 truth
    noise_max: float = 0.0  # σ_max
    ratio_rms: float = 0.0  # RMS(Δ) / σ_rms, judged against Tol.rms
    ratio_max: float = 0.0  # max|Δ| / σ_max, judged against Tol.max

    def describe(self) -> str:
        s = (f"{self.path}: max|Δ|={self.max_abs:.3g} (max|ref|={self.ref_max:.3g}, ‖Δ‖/‖ref‖={self.rel_norm:.2g}; "
             f"{self.ratio_rms:.3g}× / {self.ratio_max:.3g}× the fp noise (RMS / max))")
        if self.first_values is not None and not self.passed:
            s += f", first differing values {self.first_values[0]:.7g} vs {self.first_values[1]:.7g}"
        return s + (f" [{self.note}]" if self.note else "")


def noise_scales(sample: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray], mask: np.ndarray | None = None,
                 model_class: str = "BertModel") -> dict[str, Noise]:
    """Per path, how far ``sample`` (one implementation in the row's dtype) is from ``truth`` (the same
    implementation in float64) on the entries the comparison looks at (kept positions)."""
    return {p: Noise.measure(kept(p, np.asarray(sample[p], np.float64), mask, model_class),
                             kept(p, np.asarray(truth[p], np.float64), mask, model_class))
            for p in truth if p in sample and np.shape(sample[p]) == np.shape(truth[p])}


def diff_tensors(a: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], tol: Tol,
                 mask: np.ndarray | None = None, model_class: str = "BertModel",
                 keys: list[str] | None = None, noise: Mapping[str, Noise] | None = None) -> list[TensorDiff]:
    """Compare every path of ``ref`` and ``a`` (or ``keys``) in forward order, each against its noise
    scale (``noise_scales``; a path without one is held to one rounding of the reference). Missing paths
    and shape mismatches fail."""
    out = []
    noise = noise or {}
    paths = sorted(set(ref) | set(a), key=field_order) if keys is None else keys
    for path in paths:
        if path not in a or path not in ref:
            out.append(TensorDiff(path, float("inf"), 0.0, False,
                                  note="missing in " + ("candidate" if path not in a else "reference")))
            continue
        x, y = np.asarray(a[path], np.float64), np.asarray(ref[path], np.float64)
        if x.shape != y.shape:
            out.append(TensorDiff(path, float("inf"), 0.0, False, note=f"shape {x.shape} vs {y.shape}"))
            continue
        xk, yk = kept(path, x, mask, model_class), kept(path, y, mask, model_class)
        if xk.size == 0:
            out.append(TensorDiff(path, 0.0, 0.0, True))
            continue
        both_nan = np.isnan(xk) & np.isnan(yk)
        d = np.where(both_nan, 0.0, np.abs(xk - yk))
        d = np.where(np.isnan(d), np.inf, d)
        worst = int(np.argmax(d))
        max_abs = float(d[worst])
        ref_max = float(np.nanmax(np.abs(yk))) if not np.all(np.isnan(yk)) else 0.0
        diff_norm, ref_norm = float(np.sqrt(np.sum(d * d))), float(np.sqrt(np.nansum(yk * yk)))
        rms = diff_norm / np.sqrt(d.size)
        nz = noise.get(path) or Noise.measure(yk, yk)
        r_rms, r_max = tol.ratios(rms, max_abs, nz)
        passed = bool(r_rms <= tol.rms and r_max <= tol.max)
        first = None
        if not passed:
            bad = np.flatnonzero(d > tol.max * tol.scales(nz)[1])
            i = int(bad[0]) if bad.size else worst
            first = (float(xk[i]), float(yk[i]))
        rel_norm = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
        s_rms, s_max = tol.scales(nz)
        out.append(TensorDiff(path, max_abs, ref_max, passed, first, rel_norm=rel_norm, rms=rms, noise_rms=s_rms,
                              noise_max=s_max, ratio_rms=r_rms, ratio_max=r_max))
    return out
