"""The one tolerance table, keyed by (dtype, device). Mirrored in docs/tolerances.md (a test keeps the two
in sync). Never add a per-model or per-backend entry: a pair that does not meet its row has a bug.

Every rule is *calibrated on float64 truth*. For each tensor the suite also runs one backend (the *truth
backend*, ``conformance.suite.TRUTH_BACKENDS``) twice on the same weights and batch: in float64 (the
truth ``T``) and in the row's dtype (a sample ``s`` of that dtype's rounding noise). The tensor's noise
scale is how far that implementation is from the truth:

    σ_rms = max(RMS(s − T), unit · RMS(T))        σ_max = max(max|s − T|, unit · max|T|)

(``unit``: the dtype's unit roundoff; the floor says that an implementation is at least one rounding away
from the truth). A pair (a, b) passes on the tensor when

    RMS(a − b) ≤ rms · σ_rms   and   max|a − b| ≤ max · σ_max

So a sum that cancels (a bias gradient) gets the floor its summands' rounding implies, and a large
well-conditioned tensor gets the few ulps it really has. ``rms`` / ``max`` come from the measurements in
docs/tolerances.md: the largest ratio seen between two correct backends, with headroom.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Unit roundoff (half an ulp of 1.0) per dtype: the smallest relative error an implementation can have.
UNIT: dict[str, float] = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


@dataclasses.dataclass(frozen=True)
class Noise:
    """How far one implementation in the row's dtype is from the float64 truth on one tensor."""
    rms: float       # RMS(sample − truth) over the compared entries
    max: float       # max |sample − truth|
    truth_rms: float  # RMS(truth): the unit floor is relative to it
    truth_max: float  # max |truth|
    # An absolute floor derived from other measurements (``conformance.suite.Runner.noise``): a tensor
    # that is mathematically zero (float64 truth below one fp32 rounding of the check's largest value),
    # or an AdamW step, whose noise is its gradient's noise propagated through the update.
    floor: float = 0.0

    @staticmethod
    def measure(sample: np.ndarray, truth: np.ndarray) -> "Noise":
        """``sample``, ``truth``: the same tensor's compared entries (any shape), float64 in the truth."""
        s, t = np.asarray(sample, np.float64).reshape(-1), np.asarray(truth, np.float64).reshape(-1)
        if s.size == 0:
            return Noise(0.0, 0.0, 0.0, 0.0)
        ok = ~(np.isnan(s) | np.isnan(t))  # NaN in both (an all-ignored loss) carries no noise
        e, t = (s - t)[ok], t[ok]
        if e.size == 0:
            return Noise(0.0, 0.0, 0.0, 0.0)
        e = np.where(np.isfinite(e), e, 0.0)
        return Noise(float(np.sqrt(np.mean(e * e))), float(np.max(np.abs(e))),
                     float(np.sqrt(np.mean(t * t))), float(np.max(np.abs(t))))


@dataclasses.dataclass(frozen=True)
class Tol:
    """RMS(a − b) ≤ ``rms`` · σ_rms and max|a − b| ≤ ``max`` · σ_max (σ: see the module docstring).

    ``abs`` / ``rel``: a fixed budget ``max|a − b| ≤ abs + rel · max|ref|`` for callers that compare
    against their own float64 formula without a truth run of a backend (the training-loop and embedding
    tests, via ``allows``); set from the largest noise measured on MiniLM (docs/tolerances.md). The
    parity suite itself judges with ``judge``."""
    rms: float
    max: float
    unit: float
    abs: float = 0.0
    rel: float = 0.0

    def scales(self, noise: Noise) -> tuple[float, float]:
        """(σ_rms, σ_max) of one tensor: its measured noise, floored at one rounding of the truth."""
        tiny = float(np.finfo(np.float32).tiny)  # a tensor that is exactly zero in truth and sample
        return (max(noise.rms, self.unit * noise.truth_rms, noise.floor, tiny),
                max(noise.max, self.unit * noise.truth_max, noise.floor, tiny))

    def ratios(self, diff_rms: float, diff_max: float, noise: Noise) -> tuple[float, float]:
        """(RMS(a − b) / σ_rms, max|a − b| / σ_max): how many noise scales apart the pair is."""
        s_rms, s_max = self.scales(noise)
        return diff_rms / s_rms, diff_max / s_max

    def judge(self, diff_rms: float, diff_max: float, noise: Noise) -> bool:
        """The parity verdict on one tensor."""
        r_rms, r_max = self.ratios(diff_rms, diff_max, noise)
        return r_rms <= self.rms and r_max <= self.max

    def allows(self, max_abs: float, ref_max: float) -> bool:
        """The fixed budget (no truth run): ``max|a − b| ≤ abs + rel · max|ref|``."""
        return max_abs <= self.abs + self.rel * ref_max

    def describe(self) -> str:
        return f"RMS ≤ {self.rms:g} σ_rms, max ≤ {self.max:g} σ_max (unit {self.unit:.3g})"


@dataclasses.dataclass(frozen=True)
class Row:
    """The rules of one (dtype, device): by what each kind of check is judged (None: not run there)."""
    outputs: Tol           # forward output fields, cache and train-mode checks
    grads: Tol | None      # d loss / d parameter, and the loss itself
    step: Tol | None       # parameters after one AdamW step

    def for_kind(self, kind: str) -> Tol:
        tol = getattr(self, kind)
        if tol is None:
            raise ValueError(f"no {kind!r} rule in this row (the check does not run in this dtype)")
        return tol


def _fp32() -> Row:
    u = UNIT["float32"]
    return Row(outputs=Tol(8.0, 16.0, u, abs=1e-5), grads=Tol(8.0, 16.0, u, rel=1e-5), step=Tol(8.0, 16.0, u, abs=1e-5))


def _half(dtype: str, rel: float) -> Row:
    # Half precision is run for forward outputs only (a backend in bf16/fp16 against the fp32 reference).
    return Row(outputs=Tol(8.0, 16.0, UNIT[dtype], rel=rel), grads=None, step=None)


TOLERANCES: dict[tuple[str, str], Row] = {
    ("float32", "cpu"): _fp32(),
    # GPU fp32 with TF32 pinned off: different reduction orders, same precision class and the same rule
    # (the noise is measured on the GPU itself). Not measured on a GPU yet: see docs/tolerances.md.
    ("float32", "gpu"): _fp32(),
    ("bfloat16", "cpu"): _half("bfloat16", 6e-2),
    ("bfloat16", "gpu"): _half("bfloat16", 6e-2),
    ("float16", "cpu"): _half("float16", 1e-2),
    ("float16", "gpu"): _half("float16", 1e-2),
}


def tolerance(dtype: str, device: str) -> Row:
    try:
        return TOLERANCES[(dtype, device)]
    except KeyError:
        raise ValueError(f"no tolerance row for dtype={dtype!r}, device={device!r}; rows: "
                         f"{sorted(TOLERANCES)}") from None


def _budget(t: Tol) -> str:
    terms = ([f"{t.abs:g}"] if t.abs else []) + ([f"{t.rel:g}·max abs(ref)"] if t.rel else [])
    return "≤ " + " + ".join(terms)


def markdown_table() -> str:
    lines = ["| dtype | device | unit | outputs | gradients | AdamW step | fixed budget (no truth run) |",
             "|---|---|---|---|---|---|---|"]
    for (dtype, device), row in TOLERANCES.items():
        tols = (row.outputs, row.grads, row.step)
        cells = [f"RMS ≤ {t.rms:g} σ, max ≤ {t.max:g} σ" if t else "not run" for t in tols]
        budget = "; ".join(f"{kind} {_budget(t)}" for kind, t in zip(("outputs", "grads", "step"), tols)
                           if t and (t.abs or t.rel))
        lines.append(f"| {dtype} | {device} | {row.outputs.unit:.3g} | " + " | ".join(cells) + f" | {budget} |")
    return "\n".join(lines)
