"""The checks both the pytest suite and ``bertrio parity`` run, built on the backend adapters.

A *case* is (model class, config, canonical weights, inputs). Each check runs every selected backend on
the case and diffs every pair, tensor by tensor, against one tolerance row. Nothing here imports a
framework: adapters do, when they are loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np

from bert_common.config import BertConfig
from conformance.compare import TensorDiff, diff_tensors, field_order, noise_scales, unflatten_cache
from conformance.tolerances import Noise, tolerance

ALL_BACKENDS = ("torch", "tf", "flax")
ORACLE = "hf"
# Exported artifacts (bertrio export) as inference-only backends: conformance/adapters/artifact.py.
ARTIFACTS = ("onnx", "saved-model", "stablehlo")
# Adapters with a float64 mode, in order of preference: the float64 truth every verdict is calibrated on
# (see conformance/tolerances.py) comes from the first one installed.
TRUTH_BACKENDS = ("torch", "hf")
# One AdamW step with BERT's own hyper-parameters (eps 1e-6), the same in every framework. Weight decay
# 0.1 makes a wrong no-decay mask (bert_common.weights.no_weight_decay) visible at lr * 0.1 * |w|. Adam's
# first step moves a weight by lr * g / (|g| + eps): a gradient that is mathematically zero (attention key
# biases, the multiple-choice bias) holds only rounding noise, which the step turns into a move of
# ~lr * noise / eps with an arbitrary sign. The float64 truth has no such noise, so the measured distance
# of an fp32 step from it is exactly the floor those parameters need (docs/tolerances.md).
ADAMW = {"lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-6}
LABEL_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions")
# The train check: each backend's own Trainer (bert_<x>.training, the code `bertrio pretrain/finetune` runs)
# makes ``train_steps`` updates from the case's weights on the case's batch (every update the same batch:
# the case has one), dropout off, with BERT's recipe: linear warmup then decay to 0 at the last update,
# weight decay 0.01 except biases / LayerNorm, clipping at norm 1, eps 1e-6. The rate is small enough to
# fine-tune a real checkpoint without wrecking it and large enough that 10 updates move every weight
# by far more than its rounding. Budget: docs/tolerances.md (the float64 truth trainer's run).
TRAIN = {"learning_rate": 5e-4, "warmup_steps": 2, "weight_decay": 0.01, "max_grad_norm": 1.0,
         "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-6}
TRAIN_STEPS = 10  # bertrio parity --train-steps
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids") + LABEL_KEYS  # bert_common.training's contract
CACHE_CLASSES = ("BertModel", "BertLMHeadModel")  # the classes whose outputs carry past_key_values


def adapter(name: str):
    """The adapter module ``conformance.adapters.<name>``."""
    return importlib.import_module(f"conformance.adapters.{name.replace('-', '_')}")


def truth_backend() -> str:
    """The installed adapter the float64 truth comes from (``TRUTH_BACKENDS``)."""
    for name in TRUTH_BACKENDS:
        if available_backends((name,)):
            return name
    raise ValueError(f"the float64 truth needs one of {list(TRUTH_BACKENDS)} installed (pip install "
                     f"'bertrio[torch]'): every verdict is calibrated on it")


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
    check: str                      # forward | grads | adamw | cache | train_mode | half | train
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
        """The tensor furthest from agreement, in units of its own noise scale."""
        return max(self.diffs, key=lambda d: (max(d.ratio_rms, d.ratio_max), d.max_abs), default=None)

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
                             "rms": d.rms, "noise_rms": d.noise_rms, "noise_max": d.noise_max,
                             "ratio_rms": d.ratio_rms, "ratio_max": d.ratio_max,
                             "passed": d.passed, "first_values": d.first_values, "note": d.note}
                            for d in self.diffs]}


# Inputs indexed by layer, not by batch row: kept whole when a case is cut into its rows.
PER_LAYER_INPUTS = ("head_mask",)


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
    """Builds each backend's model once per (case, dtype, device), runs the checks, and measures each
    check's noise scale against the float64 truth (``truth``: an adapter name of ``TRUTH_BACKENDS``)."""

    def __init__(self, backends: list[str], device: str = "cpu", truth: str | None = None,
                 train_steps: int = TRAIN_STEPS):
        if not isinstance(train_steps, int) or train_steps < 1:
            raise ValueError(f"train_steps must be a positive integer, got {train_steps!r}")
        self.train_steps = train_steps
        self.backends = list(backends)
        self.device = device
        self.truth = truth or truth_backend()
        self.seconds: dict[str, float] = {b: 0.0 for b in backends}
        self._handles: dict[tuple, Any] = {}
        self._memo: dict[tuple, Any] = {}
        self._row_magnitudes: dict[int, dict[str, np.ndarray]] = {}

    def handle(self, backend: str, case: Case, dtype: str = "float32"):
        key = (backend, id(case), dtype)
        if key not in self._handles:
            t = time.perf_counter()
            self._handles[key] = adapter(backend).build(case.model_class, case.config, case.state, dtype=dtype,
                                                        device=self.device)
            self._account(backend, dtype, time.perf_counter() - t)
        return self._handles[key]

    def release(self, case: Case) -> None:
        self._row_magnitudes.pop(id(case), None)
        for key in [k for k in self._handles if k[1] == id(case)]:
            del self._handles[key]
        for key in [k for k in self._memo if k[1] == id(case)]:
            del self._memo[key]

    def _account(self, backend: str, dtype: str, dt: float) -> None:
        name = f"{backend}[float64 truth]" if dtype == "float64" else backend
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def _timed(self, backend: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t
        self.seconds[backend] = self.seconds.get(backend, 0.0) + dt
        return out, dt

    def for_check(self, check: str) -> "Runner":
        """This runner over the backends whose adapter takes part in ``check`` (an adapter's ``CHECKS``;
        every check when it has none), sharing models and results with it."""
        able = [b for b in self.backends if check in getattr(adapter(b), "CHECKS", (check,))]
        if able == self.backends:
            return self
        view = copy.copy(self)
        view.backends = able
        return view

    def _pairs(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        names = [b for b in self.backends if b in results]
        return list(itertools.combinations(names, 2))

    # ------------------------------------------------------------ one run of one backend, memoised
    def result(self, backend: str, case: Case, dtype: str, kind: str, **hyper) -> tuple[dict[str, np.ndarray], float]:
        """(flat tensors, seconds) of ``kind`` ("outputs": the forward with every field; "grads": loss and
        ``grad.<name>``; "step": the weights after one AdamW step) for one backend in one dtype (float64:
        the truth), computed once per case."""
        key = (backend, id(case), dtype, kind, tuple(sorted(hyper.items())))
        if key not in self._memo:
            ad = adapter(backend)
            t = time.perf_counter()
            if kind == "outputs":
                flat = ad.forward(self.handle(backend, case, dtype), case.inputs)
            elif kind == "grads":
                loss, g = ad.grads(self.handle(backend, case, dtype), case.inputs)
                flat = {"loss": np.asarray(loss, np.float64 if dtype == "float64" else np.float32),
                        **{f"grad.{k}": v for k, v in g.items()}}
            elif kind == "step":  # a fresh model: the step mutates it
                h = ad.build(case.model_class, case.config, case.state, dtype=dtype, device=self.device)
                flat = ad.adamw_step(h, case.inputs, **{**ADAMW, **hyper})
            else:
                raise ValueError(f"kind={kind!r} is not one of ['outputs', 'grads', 'step']")
            dt = time.perf_counter() - t
            self._account(backend, dtype, dt)
            self._memo[key] = (flat, dt)
        return self._memo[key]

    def noise(self, case: Case, kind: str, dtype: str = "float32", **hyper) -> dict[str, Noise]:
        """Per tensor, how far the truth backend run in ``dtype`` is from itself in float64.

        Two floors come from the float64 truth too. Gradients: a tensor whose truth is below one rounding
        of the check's largest gradient (``unit · max|T|``) is mathematically zero (a softmax shift, a
        single-key attention row), so every fp32 implementation can only return the rounding noise of the
        terms that cancel there, of size ``unit · max|T|``, even where the truth backend happens to be
        exact. AdamW step: the step moves a weight by ``lr · g / (|g| + eps)``, so its noise is at least
        the gradient's noise scale times ``lr · eps / (|g| + eps)²`` (the derivative of that update)."""
        sample, _ = self.result(self.truth, case, dtype, kind, **hyper)
        truth, _ = self.result(self.truth, case, "float64", kind, **hyper)
        mask = case.mask if kind == "outputs" else None
        noise = noise_scales(sample, truth, mask, case.model_class)
        unit = tolerance(dtype, self.device).outputs.unit
        if kind == "grads":
            scale = max((n.truth_max for n in noise.values() if np.isfinite(n.truth_max)), default=0.0)
            noise = {p: dataclasses.replace(n, floor=unit * scale) if n.truth_max <= unit * scale else n
                     for p, n in noise.items()}
            # A gradient is a sum over the batch rows; where the rows' contributions cancel (a 2-class
            # bias: +0.5 and -0.5 summing to 0.003), fp32 costs the sum one rounding of its *summands*, not
            # of the result. One fp32 sample can land far closer than that by luck (torch: 1.6e-10 from
            # the float64 truth on MiniLM's NSP bias, TF and Flax 3e-8), so the floor is computed from the
            # float64 per-row gradients: unit * RMS(sum_i |g_i| / B).
            summands = self._row_gradient_magnitudes(case)
            noise = {p: dataclasses.replace(n, floor=max(n.floor, unit * float(np.sqrt(np.mean(summands[p] ** 2)))))
                     if p in summands and summands[p].size else n for p, n in noise.items()}
        elif kind == "step":
            h = {**ADAMW, **hyper}
            g_noise = self.noise(case, "grads", dtype)
            g_truth, _ = self.result(self.truth, case, "float64", "grads")
            row = tolerance(dtype, self.device).for_kind("grads")
            for p, n in noise.items():
                g = g_truth.get(f"grad.{p}")
                if g is None:
                    continue
                sigma_g = row.scales(g_noise[f"grad.{p}"])[0]
                gain = h["lr"] * h["eps"] / (np.abs(np.asarray(g, np.float64)) + h["eps"]) ** 2
                noise[p] = dataclasses.replace(n, floor=float(np.max(gain)) * sigma_g)
        return noise

    def _row_gradient_magnitudes(self, case: Case) -> dict[str, np.ndarray]:
        """{"grad.<name>": sum_i |g_i| / B}: the float64 gradients of each batch row on its own (the truth
        backend, batch of one), the size of the summands the batch gradient adds up. Memoised per case."""
        if id(case) not in self._row_magnitudes:
            rows = int(np.shape(case.inputs["input_ids"])[0])
            total: dict[str, np.ndarray] = {}
            for i in range(rows):
                inputs = {k: (np.asarray(v)[i:i + 1] if k not in PER_LAYER_INPUTS and v is not None
                              and np.ndim(v) >= 1 and np.shape(v)[0] == rows else v)
                          for k, v in case.inputs.items()}
                row_case = dataclasses.replace(case, inputs=inputs)
                flat, _ = self.result(self.truth, row_case, "float64", "grads")
                self.release(row_case)
                for k, g in flat.items():
                    if k.startswith("grad."):
                        # a row with no labelled token has no loss (NaN): it adds nothing
                        total[k] = total.get(k, 0.0) + np.nan_to_num(np.abs(np.asarray(g, np.float64))) / rows
            self._row_magnitudes[id(case)] = total
        return self._row_magnitudes[id(case)]

    # ------------------------------------------------------------------ checks
    def forward(self, case: Case, dtype: str = "float32") -> list[Result]:
        """Every output field (hidden states, attentions, pooler, logits, loss, cache) of every pair; in a
        half dtype, each backend against the first backend's fp32 outputs (``half``)."""
        if dtype != "float32":
            return self.half(case, dtype)
        tol = tolerance("float32", self.device).for_kind("outputs")
        noise = self.noise(case, "outputs")
        flat = {b: self.result(b, case, "float32", "outputs") for b in self.backends}
        return [Result("forward", (a, r), case.model_class, case.variant, dtype, self.device,
                       diff_tensors(flat[a][0], flat[r][0], tol, case.mask, case.model_class, noise=noise,
                                    keys=compared_keys((a, flat[a][0]), (r, flat[r][0]))),
                       {a: flat[a][1], r: flat[r][1]})
                for r, a in self._pairs(flat)]

    def half(self, case: Case, dtype: str) -> list[Result]:
        """Each backend in ``dtype`` against the first backend's fp32 outputs; the noise scale is the truth
        backend's own ``dtype`` run against its float64 truth."""
        tol = tolerance(dtype, self.device).for_kind("outputs")
        noise = self.noise(case, "outputs", dtype)
        ref_name = self.backends[0]
        ref, _ = self.result(ref_name, case, "float32", "outputs")
        out = []
        for b in self.backends:
            flat, dt = self.result(b, case, dtype, "outputs")
            out.append(Result("half", (f"{b}[{dtype}]", f"{ref_name}[float32]"), case.model_class, case.variant,
                              dtype, self.device,
                              diff_tensors(flat, ref, tol, case.mask, case.model_class, noise=noise,
                                           keys=compared_keys((b, flat), (ref_name, ref))), {b: dt}))
        return out

    def grads(self, case: Case, dtype: str = "float32") -> list[Result]:
        """The loss and d loss / d every canonical parameter, every pair."""
        tol = tolerance(dtype, self.device).for_kind("grads")
        noise = self.noise(case, "grads", dtype)
        g = {b: self.result(b, case, dtype, "grads") for b in self.backends}
        return [Result("grads", (a, r), case.model_class, case.variant, dtype, self.device,
                       diff_tensors(g[a][0], g[r][0], tol, noise=noise), {a: g[a][1], r: g[r][1]})
                for r, a in self._pairs(g)]

    def adamw(self, case: Case, dtype: str = "float32", **hyper) -> list[Result]:
        """Weights after one AdamW step with identical hyper-parameters (``ADAMW``), every pair."""
        tol = tolerance(dtype, self.device).for_kind("step")
        noise = self.noise(case, "step", dtype, **hyper)
        w = {b: self.result(b, case, dtype, "step", **hyper) for b in self.backends}
        return [Result("adamw", (a, r), case.model_class, case.variant, dtype, self.device,
                       diff_tensors(w[a][0], w[r][0], tol, noise=noise), {a: w[a][1], r: w[r][1]})
                for r, a in self._pairs(w)]

    def cache(self, case: Case, dtype: str = "float32", prefix: int | None = None) -> list[Result]:
        """Cached incremental decoding == the full forward, in every backend (and so across them).

        The prefix runs with ``use_cache=True``; the rest arrives as one 2-token chunk, then 1-token steps.
        """
        tol = tolerance(dtype, self.device).for_kind("outputs")
        noise = self.noise(case, "outputs", dtype)
        inputs = case.without_labels()
        S = inputs["input_ids"].shape[-1]
        prefix = prefix or max(1, S - 4)
        key = "logits" if "logits" in _output_keys(case.model_class) else "last_hidden_state"
        results = []
        for b in self.backends:
            if b == ORACLE:  # the oracle's own cache is not under test
                continue
            ad, h = adapter(b), self.handle(b, case, dtype)
            full, _ = self.result(b, case, dtype, "outputs")
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
                                  dtype, self.device,
                                  diff_tensors(inc, {key: full[key]}, tol, case.mask, case.model_class,
                                               noise=noise)))
        return results

    def train_mode(self, case: Case, dtype: str = "float32") -> list[Result]:
        """Training-mode outputs (dropout 0 in the case's config) equal eval-mode outputs, per backend."""
        tol = tolerance(dtype, self.device).for_kind("outputs")
        noise = self.noise(case, "outputs", dtype)
        # Dropout 0 everywhere, whatever the checkpoint's config says: training mode must then be a no-op.
        quiet = case.config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                    classifier_dropout=None)
        results = []
        for b in self.backends:
            ad = adapter(b)
            h = ad.build(case.model_class, quiet, case.state, dtype=dtype, device=self.device)
            ev, _ = self._timed(b, ad.forward, h, case.inputs)
            tr, _ = self._timed(b, ad.forward, h, case.inputs, train=True)
            results.append(Result("train_mode", (f"{b}[train]", f"{b}[eval]"), case.model_class, case.variant,
                                  dtype, self.device,
                                  diff_tensors(tr, ev, tol, case.mask, case.model_class, noise=noise)))
        return results

    def varlen(self, case: Case, dtype: str = "float32") -> list[Result]:
        """Each backend with ``attn_implementation="varlen"`` (no attention maps requested, so it runs
        unpadded: dense layers on the kept tokens, attention per sequence) against the truth backend's
        padded forward, on kept tokens, with the padded forward's noise. Question answering's loss is a
        softmax over every column, dropped ones included, so it is left out where the batch has padding."""
        tol = tolerance(dtype, self.device).for_kind("outputs")
        noise = self.noise(case, "outputs", dtype)
        ref, _ = self.result(self.truth, case, dtype, "outputs")
        config = case.config.replace(attn_implementation="varlen")
        padded = case.mask is not None and not np.all(np.asarray(case.mask) == 1)
        keys = [k for k in sorted(ref, key=field_order) if not k.startswith(("attentions", "cross_attentions"))
                and not (k == "loss" and padded and case.model_class == "BertForQuestionAnswering")]
        results = []
        for b in [b for b in self.backends if b in ALL_BACKENDS]:  # exported artifacts have no switch
            ad = adapter(b)
            h = ad.build(case.model_class, config, case.state, dtype=dtype, device=self.device)
            got, dt = self._timed(b, ad.forward, h, case.inputs, output_attentions=False)
            results.append(Result("varlen", (f"{b}[varlen]", f"{self.truth}[padded]"), case.model_class,
                                  case.variant, dtype, self.device,
                                  diff_tensors(got, ref, tol, case.mask, case.model_class, noise=noise, keys=keys),
                                  {b: dt}))
        return results


    # ------------------------------------------------------------------ the train check
    def _trained(self, backend: str, case: Case, dtype: str, reverse: bool = False
                 ) -> tuple[dict[str, np.ndarray], float]:
        """(flat, seconds) of one backend's training run on ``case`` (memoised): ``loss.step_NNN`` (the
        loss of update NNN, 1-based, a () array) and the final weights under canonical names.
        ``reverse``: the batch rows in reverse order (the same run in exact arithmetic: every loss is a
        mean over rows or tokens; in fp32 every reduction rounds differently)."""
        from bert_common.training import TrainingArguments
        key = (backend, id(case), dtype, "train", self.train_steps, reverse)
        if key not in self._memo:
            batch = train_batch(case)
            if reverse:
                batch = {k: np.ascontiguousarray(v[::-1]) for k, v in batch.items()}
            args = TrainingArguments(max_steps=self.train_steps, batch_size=int(batch["input_ids"].shape[0]),
                                     dropout=False, **TRAIN)
            t = time.perf_counter()
            losses, params = adapter(backend).train(case.model_class, case.config, case.state,
                                                    [batch] * self.train_steps, args, dtype=dtype,
                                                    device=self.device)
            dt = time.perf_counter() - t
            self._account(backend, dtype, dt)
            flat = {f"loss.step_{i + 1:03d}": np.asarray(v, np.float64 if dtype == "float64" else np.float32)
                    for i, v in enumerate(losses)}
            self._memo[key] = ({**flat, **params}, dt)
        return self._memo[key]

    def train(self, case: Case, dtype: str = "float32") -> list[Result]:
        """Every pair of trainers (the backends whose ``Trainer`` takes the case's head) after
        ``train_steps`` identical updates: the loss of each update and every final weight.

        Noise: the truth backend's trainer run with float64 master weights (the truth) and twice in
        ``dtype``: on the batch as given and with its rows reversed (the same run, rounded differently).
        A tensor's σ is the larger distance of the two samples from the truth (floored at one rounding,
        as everywhere): one sample of a training run can land close to the truth by luck on a small
        tensor (a 32-entry attention bias after 6 updates, 1/18 of another backend's distance) and
        would turn correct backends into a false alarm. The loss of update k is judged against the
        noise of the loss curve up to k (RMS and max over updates 1..k), so an early update is not held
        to the noise the run has grown by its end, nor a late one to a single lucky sample."""
        truth_ad = adapter(self.truth)
        if not hasattr(truth_ad, "train"):
            raise ValueError(f"the train check needs a trainer in the truth backend {self.truth!r} "
                             f"(pip install 'bertrio[torch]')")
        able = [b for b in self.backends if hasattr(adapter(b), "trains") and adapter(b).trains(case.model_class)]
        if len(able) < 2 or not truth_ad.trains(case.model_class):
            return []
        runs = {b: self._trained(b, case, dtype) for b in able}
        truth, _ = self._trained(self.truth, case, "float64")
        steps = sorted(k for k in truth if k.startswith("loss.step_"))
        t_curve = np.array([float(truth[k]) for k in steps])
        per_sample = []
        for reverse in (False, True):
            sample, _ = self._trained(self.truth, case, dtype, reverse=reverse)
            n = noise_scales({k: v for k, v in sample.items() if k not in steps},
                             {k: v for k, v in truth.items() if k not in steps})
            s_curve = np.array([float(sample[k]) for k in steps])
            n.update({k: Noise.measure(s_curve[:i + 1], t_curve[:i + 1]) for i, k in enumerate(steps)})
            per_sample.append(n)
        noise = {k: Noise(max(a.rms, b.rms), max(a.max, b.max), a.truth_rms, a.truth_max)
                 for k, a in per_sample[0].items() for b in [per_sample[1][k]]}
        tol = tolerance(dtype, self.device).for_kind("step")
        return [Result("train", (a, r), case.model_class, case.variant, dtype, self.device,
                       diff_tensors(runs[a][0], runs[r][0], tol, noise=noise), {a: runs[a][1], r: runs[r][1]})
                for r, a in self._pairs(runs)]


def train_batch(case: Case) -> dict[str, np.ndarray]:
    """The case's batch in ``bert_common.training``'s batch contract: its keys, integers as int32."""
    out = {}
    for k in BATCH_KEYS:
        if k in case.inputs and case.inputs[k] is not None:
            a = np.asarray(case.inputs[k])
            out[k] = a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
    return out


def compared_keys(*named: tuple[str, Mapping[str, np.ndarray]]) -> list[str] | None:
    """The paths a pair compares: every path of both (None), unless one side is an exported artifact
    (an adapter with ``output_keys``), which is compared on the fields it exports."""
    for name, flat in named:
        if hasattr(adapter(name), "output_keys"):
            return sorted(flat, key=field_order)
    return None


def _output_keys(model_class: str) -> tuple[str, ...]:
    from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
    return OUTPUT_FIELDS[OUTPUT_OF[model_class]]


# ---------------------------------------------------------------------------------------- check registry
@dataclasses.dataclass(frozen=True)
class Check:
    """One kind of check: ``Runner.<method>(case, dtype) -> list[Result]``, run on the cases it applies to.

    To add a check, write the Runner method and add one entry to ``CHECKS``; ``bertrio parity --checks``,
    the plan below and the reports pick it up from there.
    """
    help: str
    method: str
    needs_loss: bool = False                     # runs on heads with a loss (gradient-based checks)
    dtypes: tuple[str, ...] = ("float32",)       # the --dtype values it runs in ("*": every one)
    applies: Callable[[Case], bool] = lambda case: True


CHECKS: dict[str, Check] = {
    "forward": Check("every output field of every pair (half dtypes: each backend against the fp32 reference)",
                     "forward", dtypes=("*",)),
    "grads": Check("the loss and d loss / d every canonical parameter", "grads", needs_loss=True),
    "cache": Check("cached incremental decoding equals the full forward (decoder configs)", "cache",
                   applies=lambda case: case.config.is_decoder and case.model_class in CACHE_CLASSES),
    "adamw": Check("the weights after one AdamW step (BERT's hyper-parameters, eps 1e-6)", "adamw",
                   needs_loss=True),
    "train_mode": Check("training-mode outputs with dropout 0 equal eval-mode outputs", "train_mode"),
    "varlen": Check("attn_implementation='varlen' (unpadded) equals the padded forward on kept tokens",
                    "varlen", applies=lambda case: not case.config.add_cross_attention),
    "train": Check("each backend's Trainer: the loss of every update and the final weights after "
                   "--train-steps identical updates (dropout off)", "train", needs_loss=True,
                   applies=lambda case: not case.config.add_cross_attention),
}
DEFAULT_CHECKS = ("forward", "grads", "cache")


def plan(cases: list[Case], loss_cases: list[Case], checks: list[str], dtypes: list[str]
         ) -> list[tuple[Case, str, str]]:
    """(case, check, dtype) units in run order, grouped by case so each case's models are freed after it."""
    units = []
    ordered = list(cases) + [c for c in loss_cases if all(c is not x for x in cases)]
    for case in ordered:
        for name in checks:
            chk = CHECKS[name]
            pool = loss_cases if chk.needs_loss else cases
            if not any(case is c for c in pool) or not chk.applies(case):
                continue
            for dt in dtypes:
                if "*" in chk.dtypes or dt in chk.dtypes:
                    units.append((case, name, dt))
    return units


def run_plan(runner: Runner, units: list[tuple[Case, str, str]], progress: bool = False) -> list[Result]:
    """Run ``units`` (from ``plan``); ``progress``: a tqdm bar on stderr, one step per check."""
    results: list[Result] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(units), unit="check", file=sys.stderr, leave=False)
    for i, (case, name, dt) in enumerate(units):
        if bar is not None:
            bar.set_description(f"{name} {case.model_class} {dt}/{runner.device}")
        results += getattr(runner.for_check(name), CHECKS[name].method)(case, dt)
        if bar is not None:
            bar.update(1)
        if i + 1 == len(units) or units[i + 1][0] is not case:
            runner.release(case)
    if bar is not None:
        bar.close()
    return results
