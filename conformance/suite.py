"""The checks both the pytest suite and ``bertrio parity`` run, built on the backend adapters.

A *case* is (model class, config, canonical weights, inputs). Each check runs every selected backend on
the case and diffs every pair, tensor by tensor, against one tolerance row. Nothing here imports a
framework: adapters do, when they are loaded.
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import time
from typing import Any, Mapping

import numpy as np

from bert_common.config import BertConfig
from conformance.compare import TensorDiff, diff_tensors, flatten_outputs, unflatten_cache
from conformance.tolerances import tolerance

ALL_BACKENDS = ("torch", "tf", "flax")
ORACLE = "hf"
# One AdamW step, the same in every framework. Adam's first step moves each weight by about
# lr * g / (|g| + eps): with BERT's eps = 1e-6 a gradient that is mathematically zero (attention key
# biases, the multiple-choice bias) turns its ~1e-8 rounding noise into a move of ~lr/100 whose sign is
# arbitrary, so no framework pair can agree on it. eps = 1e-4 keeps that amplification below the step
# tolerance while the check still exercises every part of the update; weight decay 0.1 makes a wrong
# no-decay mask (bert_common.weights.no_weight_decay) visible at lr * 0.1 * |w|.
ADAMW = {"lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-4}
LABEL_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions")


def adapter(name: str):
    """The adapter module ``conformance.adapters.<name>``."""
    return importlib.import_module(f"conformance.adapters.{name}")


def available_backends(names=ALL_BACKENDS + (ORACLE,)) -> list[str]:
    out = []
    for n in names:
        try:
            if adapter(n).available():
                out.append(n)
        except ImportError:
            continue
    return out


@dataclasses.dataclass
class Result:
    """One check of one backend pair on one case."""
    check: str                      # forward | grads | adamw | cache | train_mode | half
    pair: tuple[str, str]           # (candidate, reference)
    model_class: str
    variant: str
    dtype: str
    device: str
    diffs: list[TensorDiff]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.diffs)

    @property
    def worst(self) -> TensorDiff | None:
        return max(self.diffs, key=lambda d: d.max_abs, default=None)

    @property
    def first_failure(self) -> TensorDiff | None:
        return next((d for d in self.diffs if not d.passed), None)

    def label(self) -> str:
        return (f"{self.check} {self.pair[0]} vs {self.pair[1]} / {self.model_class} / {self.variant} / "
                f"{self.dtype} / {self.device}")

    def message(self) -> str:
        f = self.first_failure
        if f is None:
            w = self.worst
            return f"PASS {self.label()}: max|Δ| {w.max_abs:.3g} over {len(self.diffs)} tensors" if w else \
                f"PASS {self.label()}"
        bad = [d for d in self.diffs if not d.passed]
        return (f"FAIL {self.label()}: {len(bad)} of {len(self.diffs)} tensors differ; first: {f.describe()}"
                + "".join(f"\n    {d.describe()}" for d in bad[1:6]))

    def to_json(self) -> dict:
        return {"check": self.check, "pair": list(self.pair), "model_class": self.model_class,
                "variant": self.variant, "dtype": self.dtype, "device": self.device, "passed": self.passed,
                "seconds": self.seconds,
                "tensors": [{"path": d.path, "max_abs": d.max_abs, "ref_max": d.ref_max, "rel_norm": d.rel_norm,
                             "passed": d.passed, "first_values": d.first_values, "note": d.note}
                            for d in self.diffs]}


@dataclasses.dataclass
class Case:
    model_class: str
    variant: str
    config: BertConfig
    state: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]

    @property
    def mask(self) -> np.ndarray | None:
        return self.inputs.get("attention_mask")

    def without_labels(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.inputs.items() if k not in LABEL_KEYS}


class Runner:
    """Builds each backend's model once per (case, dtype, device) and runs the checks."""

    def __init__(self, backends: list[str], device: str = "cpu"):
        self.backends = list(backends)
        self.device = device
        self.seconds: dict[str, float] = {b: 0.0 for b in backends}
        self._handles: dict[tuple, Any] = {}

    def handle(self, backend: str, case: Case, dtype: str = "float32"):
        key = (backend, id(case), dtype)
        if key not in self._handles:
            t = time.perf_counter()
            self._handles[key] = adapter(backend).build(case.model_class, case.config, case.state, dtype=dtype,
                                                        device=self.device)
            self.seconds[backend] += time.perf_counter() - t
        return self._handles[key]

    def release(self, case: Case) -> None:
        for key in [k for k in self._handles if k[1] == id(case)]:
            del self._handles[key]

    def _timed(self, backend: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t
        self.seconds[backend] += dt
        return out, dt

    def _pairs(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        names = [b for b in self.backends if b in results]
        return list(itertools.combinations(names, 2))

    # ------------------------------------------------------------------ checks
    def forward(self, case: Case, dtype: str = "float32") -> list[Result]:
        """Every output field (hidden states, attentions, pooler, logits, loss, cache) of every pair."""
        tol = tolerance("float32", self.device).outputs
        flat, secs = {}, {}
        for b in self.backends:
            flat[b], secs[b] = self._timed(b, adapter(b).forward, self.handle(b, case, dtype), case.inputs)
        return [Result("forward", (a, r), case.model_class, case.variant, dtype, self.device,
                       diff_tensors(flat[a], flat[r], tol, case.mask, case.model_class),
                       {a: secs[a], r: secs[r]})
                for r, a in self._pairs(flat)]

    def half(self, case: Case, dtype: str) -> list[Result]:
        """Each backend in ``dtype`` against the first backend's fp32 outputs."""
        tol = tolerance(dtype, self.device).outputs
        ref_name = self.backends[0]
        ref, _ = self._timed(ref_name, adapter(ref_name).forward, self.handle(ref_name, case), case.inputs)
        out = []
        for b in self.backends:
            flat, dt = self._timed(b, adapter(b).forward, self.handle(b, case, dtype), case.inputs)
            out.append(Result("half", (f"{b}[{dtype}]", f"{ref_name}[float32]"), case.model_class, case.variant,
                              dtype, self.device, diff_tensors(flat, ref, tol, case.mask, case.model_class),
                              {b: dt}))
        return out

    def grads(self, case: Case) -> list[Result]:
        """d loss / d every canonical parameter, every pair."""
        tol = tolerance("float32", self.device).grads
        g, secs = {}, {}
        for b in self.backends:
            (loss, grads), secs[b] = self._timed(b, adapter(b).grads, self.handle(b, case), case.inputs)
            g[b] = {"loss": np.float32(loss), **{f"grad.{k}": v for k, v in grads.items()}}
        out_tol = tolerance("float32", self.device).outputs
        results = []
        for r, a in self._pairs(g):
            diffs = diff_tensors({"loss": g[a]["loss"]}, {"loss": g[r]["loss"]}, out_tol)
            diffs += diff_tensors({k: v for k, v in g[a].items() if k != "loss"},
                                  {k: v for k, v in g[r].items() if k != "loss"}, tol)
            results.append(Result("grads", (a, r), case.model_class, case.variant, "float32", self.device, diffs,
                                  {a: secs[a], r: secs[r]}))
        return results

    def adamw(self, case: Case, **hyper) -> list[Result]:
        """Weights after one AdamW step with identical hyper-parameters (``ADAMW``), every pair."""
        hyper = {**ADAMW, **hyper}
        tol = tolerance("float32", self.device).step
        w, secs = {}, {}
        for b in self.backends:
            # A fresh model: the step mutates it.
            h = adapter(b).build(case.model_class, case.config, case.state, dtype="float32", device=self.device)
            w[b], secs[b] = self._timed(b, adapter(b).adamw_step, h, case.inputs, **hyper)
        return [Result("adamw", (a, r), case.model_class, case.variant, "float32", self.device,
                       diff_tensors(w[a], w[r], tol), {a: secs[a], r: secs[r]})
                for r, a in self._pairs(w)]

    def cache(self, case: Case, prefix: int | None = None) -> list[Result]:
        """Cached incremental decoding == the full forward, in every backend (and so across them).

        The prefix runs with ``use_cache=True``; the rest arrives as one 2-token chunk, then 1-token steps.
        """
        tol = tolerance("float32", self.device).outputs
        inputs = case.without_labels()
        S = inputs["input_ids"].shape[-1]
        prefix = prefix or max(1, S - 4)
        key = "logits" if "logits" in _output_keys(case.model_class) else "last_hidden_state"
        results = []
        for b in self.backends:
            ad, h = adapter(b), self.handle(b, case)
            full, _ = self._timed(b, ad.forward, h, inputs, output_hidden_states=False, output_attentions=False,
                                  use_cache=False)
            cuts = [prefix] + list(range(prefix + 2, S, 1)) + [S]
            pieces, past, start = [], None, 0
            for end in cuts:
                step = {k: (v[:, start:end] if k in ("input_ids", "token_type_ids") else v)
                        for k, v in inputs.items() if k != "attention_mask"}
                step["attention_mask"] = inputs["attention_mask"][:, :end]
                o, _ = self._timed(b, ad.forward, h, step, output_hidden_states=False, output_attentions=False,
                                   use_cache=True, past_key_values=past)
                pieces.append(o[key])
                past = unflatten_cache(o)
                start = end
            inc = {key: np.concatenate(pieces, axis=1)}
            results.append(Result("cache", (f"{b}[cached]", f"{b}[full]"), case.model_class, case.variant,
                                  "float32", self.device,
                                  diff_tensors(inc, {key: full[key]}, tol, case.mask, case.model_class)))
        return results

    def train_mode(self, case: Case) -> list[Result]:
        """Training-mode outputs (dropout 0 in the case's config) equal eval-mode outputs, per backend."""
        tol = tolerance("float32", self.device).outputs
        # Dropout 0 everywhere, whatever the checkpoint's config says: training mode must then be a no-op.
        quiet = case.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                    classifier_dropout=None)
        results = []
        for b in self.backends:
            ad = adapter(b)
            h = ad.build(case.model_class, quiet, case.state, dtype="float32", device=self.device)
            ev, _ = self._timed(b, ad.forward, h, case.inputs)
            tr, _ = self._timed(b, ad.forward, h, case.inputs, train=True)
            results.append(Result("train_mode", (f"{b}[train]", f"{b}[eval]"), case.model_class, case.variant,
                                  "float32", self.device, diff_tensors(tr, ev, tol, case.mask, case.model_class)))
        return results


def _output_keys(model_class: str) -> tuple[str, ...]:
    from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
    return OUTPUT_FIELDS[OUTPUT_OF[model_class]]
