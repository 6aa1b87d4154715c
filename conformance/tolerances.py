"""The one tolerance table, keyed by (dtype, device). Mirrored in docs/tolerances.md (a test keeps the two
in sync). Never add a per-model or per-backend entry: a pair that does not meet its row has a bug.

A quantity passes when ``max|a - b| <= abs + rel * max|reference|`` over the compared positions.
- ``outputs``: every forward output field (hidden states, attentions, pooler, logits, loss, cache).
- ``grads``: d loss / d parameter, per canonical parameter, as a norm-wise relative error
  ``‖Δ‖₂ / ‖ref‖₂`` (the standard meaning of "agree to 1e-5 relative" for a tensor), plus a floor for
  mathematically-zero gradients (attention key biases), which hold only rounding noise. Measured
  against an fp64 reference on the real MiniLM checkpoint, each fp32 backend's *worst single entry*
  already sits ~0.5–1.3e-5 (relative to the tensor's max) from the truth, so an entry-wise 1e-5 bound
  between two fp32 backends is below fp32's own noise; the norm-wise error is ~1e-6.
- ``step``: parameters after one AdamW step.
Half-precision rows compare a backend run in that dtype against the fp32 reference.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tol:
    abs: float
    rel: float = 0.0
    # Fraction of the largest reference value over *all* tensors of the check (gradients only): a
    # parameter whose true gradient is exactly zero (e.g. attention key biases, which softmax cancels)
    # holds pure rounding noise of the size of the model's gradients, which no per-tensor rule can judge.
    global_rel: float = 0.0
    # Judge the whole tensor by norms instead of its worst entry: ||Δ||₂ <= rel·||ref||₂. A tensor whose
    # reference is itself at noise level (RMS(ref) <= global_rel·max|all refs|: a mathematically-zero
    # gradient) passes when RMS(Δ) is at that level too; every other tensor gets no floor at all.
    norm: bool = False

    def is_zero_level(self, ref_norm: float, global_max: float, size: int) -> bool:
        return self.norm and ref_norm / max(size, 1) ** 0.5 <= self.global_rel * global_max

    def allows(self, max_abs: float, ref_max: float, global_max: float = 0.0, diff_norm: float = 0.0,
               ref_norm: float = 0.0, size: int = 1) -> bool:
        if self.norm:
            if self.is_zero_level(ref_norm, global_max, size):
                return diff_norm / max(size, 1) ** 0.5 <= self.abs + self.global_rel * global_max
            return diff_norm <= self.abs + self.rel * ref_norm
        return max_abs <= self.abs + self.rel * ref_max + self.global_rel * global_max

    def describe(self) -> str:
        if self.norm:
            return (f"‖Δ‖₂ ≤ {self.rel:g} × ‖ref‖₂; zero gradients (RMS(ref) ≤ {self.global_rel:g} × max abs(all "
                    f"grads)): RMS(Δ) ≤ {self.global_rel:g} × max abs(all grads)")
        terms = [f"{self.abs:g}"] if self.abs or not (self.rel or self.global_rel) else []
        if self.rel:
            terms.append(f"{self.rel:g} × max abs(ref)")
        if self.global_rel:
            terms.append(f"{self.global_rel:g} × max abs(all grads)")
        return " + ".join(terms)


@dataclasses.dataclass(frozen=True)
class Row:
    outputs: Tol
    grads: Tol
    step: Tol


TOLERANCES: dict[tuple[str, str], Row] = {
    ("float32", "cpu"): Row(outputs=Tol(1e-5), grads=Tol(0.0, 1e-5, 1e-6, norm=True), step=Tol(1e-5)),
    # GPU fp32 with TF32 pinned off: different reduction orders, same precision class.
    ("float32", "gpu"): Row(outputs=Tol(1e-5), grads=Tol(0.0, 1e-5, 1e-6, norm=True), step=Tol(1e-5)),
    # Half precision vs the fp32 reference: weights/matmuls in half, softmax and LayerNorm in fp32.
    ("bfloat16", "cpu"): Row(outputs=Tol(0.0, 6e-2), grads=Tol(0.0, 1e-1, 1e-3, norm=True), step=Tol(2e-3)),
    ("bfloat16", "gpu"): Row(outputs=Tol(0.0, 6e-2), grads=Tol(0.0, 1e-1, 1e-3, norm=True), step=Tol(2e-3)),
    ("float16", "cpu"): Row(outputs=Tol(0.0, 1e-2), grads=Tol(0.0, 2e-2, 1e-3, norm=True), step=Tol(2e-3)),
    ("float16", "gpu"): Row(outputs=Tol(0.0, 1e-2), grads=Tol(0.0, 2e-2, 1e-3, norm=True), step=Tol(2e-3)),
}


def tolerance(dtype: str, device: str) -> Row:
    try:
        return TOLERANCES[(dtype, device)]
    except KeyError:
        raise ValueError(f"no tolerance row for dtype={dtype!r}, device={device!r}; rows: "
                         f"{sorted(TOLERANCES)}") from None


def markdown_table() -> str:
    lines = ["| dtype | device | outputs | gradients | AdamW step |", "|---|---|---|---|---|"]
    for (dtype, device), row in TOLERANCES.items():
        lines.append(f"| {dtype} | {device} | {row.outputs.describe()} | {row.grads.describe()} | "
                     f"{row.step.describe()} |")
    return "\n".join(lines)
