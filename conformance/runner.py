"""``bertrio parity``: run the conformance checks on a checkpoint and report.

Exit codes: 0 all pass, 1 any mismatch (or ``--require-gpu`` unmet), 2 bad usage / bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from xml.sax.saxutils import escape, quoteattr

from bert_common.cli.base import EXIT_MISMATCH, EXIT_OK, default_checkpoint
from bert_common.io_utils import atomic_write_text
from conformance.cases import checkpoint_cases
from conformance.suite import (ALL_BACKENDS, ARTIFACTS, CHECKS, DEFAULT_CHECKS, ORACLE, TRAIN, TRAIN_STEPS, Result, Runner,
                               adapter, available_backends, plan, run_plan, truth_backend)
from conformance.tolerances import TOLERANCES, markdown_table

DTYPES = ("float32", "bfloat16", "float16")
# Distributions whose versions a report records (the first installed name of each entry).
VERSIONED = {"bertrio": ("bertrio",), "torch": ("torch",), "tensorflow": ("tensorflow-cpu", "tensorflow"),
             "keras": ("keras",), "jax": ("jax",), "jaxlib": ("jaxlib",), "flax": ("flax",), "optax": ("optax",),
             "numpy": ("numpy",), "transformers": ("transformers",)}


def versions() -> dict[str, str | None]:
    """Installed versions of bertrio, the frameworks and NumPy, plus Python and the platform."""
    from importlib import metadata
    out: dict[str, str | None] = {}
    for key, dists in VERSIONED.items():
        out[key] = None
        for d in dists:
            try:
                out[key] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def select_backends(requested: list[str] | None) -> list[str]:
    installed = available_backends(ALL_BACKENDS + ARTIFACTS + (ORACLE,))
    if requested is None:
        chosen = [b for b in ALL_BACKENDS if b in installed]
    else:
        for b in requested:
            if b not in ALL_BACKENDS + ARTIFACTS + (ORACLE,):
                raise ValueError(f"--backends: {b!r} is not one of {list(ALL_BACKENDS + ARTIFACTS) + [ORACLE]}")
            if b not in installed:
                raise ValueError(f"--backends: {b!r} is not installed (installed: {installed})")
        chosen = requested
    if len(chosen) < 2:
        raise ValueError(f"parity needs at least two backends; available: {installed}")
    return chosen


def run(checkpoint: str, backends: list[str], heads: list[str] | None, dtypes: list[str], devices: list[str],
        checks: list[str], batch: int = 2, seq: int = 16, progress: bool = False, train_steps: int = TRAIN_STEPS
        ) -> tuple[list[Result], dict]:
    """Run ``checks`` for every case (``train_steps``: updates of the train check); returns (results,
    environment record)."""
    truth = truth_backend()
    env: dict = {"checkpoint": os.path.abspath(checkpoint), "backends": backends, "dtypes": dtypes,
                 "devices": devices, "truth": f"{truth} in float64", "versions": versions(), "tf32": {}}
    cases = checkpoint_cases(checkpoint, heads, batch=batch, seq=seq)
    # Gradients need a loss; BertModel has none. When no selected head has one (a base checkpoint), the
    # gradient checks run on BertForPreTraining over the same encoder weights, its head seeded identically
    # in every backend, so every encoder parameter of the checkpoint still gets its gradient compared.
    trainable = [c for c in cases if c.model_class != "BertModel"]
    if not trainable and any(CHECKS[c].needs_loss for c in checks):
        trainable = checkpoint_cases(checkpoint, ["BertForPreTraining"], batch=batch, seq=seq)
    results: list[Result] = []
    seconds: dict[str, float] = {b: 0.0 for b in backends}
    units = plan(cases, trainable, checks, dtypes)
    for device in devices:
        if device == "gpu":
            for b in dict.fromkeys(backends + [truth]):
                env["tf32"][b] = adapter(b).pin_tf32_off()
        runner = Runner(backends, device=device, truth=truth, train_steps=train_steps)
        results += run_plan(runner, units, progress=progress)
        for b, s in runner.seconds.items():
            seconds[b] = seconds.get(b, 0.0) + s
    env["seconds_per_backend"] = seconds
    env["checks"] = list(dict.fromkeys(r.check for r in results))  # only the checks that ran
    if "train" in env["checks"]:
        env["train"] = {"steps": train_steps, **TRAIN}
    return results, env


def _summary(r: Result) -> tuple[str, str, str, str]:
    """(max |Δ|, max ‖Δ‖/‖ref‖, worst noise ratios "RMS / max", worst tensor) of one result."""
    w = r.worst
    if w is None:
        return "-", "-", "-", "-"
    rel = max((d.rel_norm for d in r.diffs if np.isfinite(d.rel_norm)), default=0.0)
    return (f"{max(d.max_abs for d in r.diffs):.2e}", f"{rel:.1e}", f"{w.ratio_rms:.2g} / {w.ratio_max:.2g}", w.path)


def format_table(results: list[Result], env: dict) -> str:
    rows = [("check", "head", "pair", "dtype/dev", "tensors", "max |Δ|", "max ‖Δ‖/‖ref‖", "noise × (RMS/max)",
             "worst tensor", "verdict")]
    for r in results:
        rows.append((r.check, r.model_class, f"{r.pair[0]} vs {r.pair[1]}", f"{r.dtype}/{r.device}",
                     str(len(r.diffs)), *_summary(r), "PASS" if r.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    secs = ", ".join(f"{b} {s:.1f}s" for b, s in env["seconds_per_backend"].items())
    lines.append(f"time per backend: {secs}")
    return "\n".join(lines)


def to_markdown(results: list[Result], env: dict) -> str:
    n_fail = sum(not r.passed for r in results)
    out = [f"# bertrio parity report", "", f"- checkpoint: `{env['checkpoint']}`",
           f"- backends: {', '.join(env['backends'])}; dtypes: {', '.join(env['dtypes'])}; devices: "
           f"{', '.join(env['devices'])}", f"- TF32: {env['tf32'] or 'n/a (CPU)'}",
           f"- verdict: **{'PASS' if not n_fail else f'FAIL ({n_fail} checks)'}**", "",
           f"- truth: {env.get('truth', '-')}; each tensor is judged against its own fp noise (see Tolerances)",
           "",
           "| check | head | pair | dtype/device | tensors | max abs diff | max ‖Δ‖/‖ref‖ (norm-wise) | "
           "worst noise ratio (RMS / max) | worst tensor | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mx, rel, ratio, path = _summary(r)
        out.append(f"| {r.check} | {r.model_class} | {r.pair[0]} vs {r.pair[1]} | {r.dtype}/{r.device} | "
                   f"{len(r.diffs)} | {mx} | {rel} | {ratio} | `{path}` | {'PASS' if r.passed else '**FAIL**'} |")
    failures = [r for r in results if not r.passed]
    if failures:
        out += ["", "## Failures", ""] + [f"- {r.message()}" for r in failures]
    out += ["", "## Tolerances", "", markdown_table(), ""]
    return "\n".join(out)


def to_junit(results: list[Result], env: dict) -> str:
    n_fail = sum(not r.passed for r in results)
    total = sum(r.seconds.get(b, 0.0) for r in results for b in r.seconds)
    cases = []
    for r in results:
        name = quoteattr(f"{r.check}[{r.pair[0]}-{r.pair[1]}-{r.model_class}-{r.variant}-{r.dtype}-{r.device}]")
        body = ""
        if not r.passed:
            body = f"<failure message={quoteattr(r.message().splitlines()[0])}>{escape(r.message())}</failure>"
        cases.append(f'  <testcase classname="bertrio.parity" name={name} '
                     f'time="{sum(r.seconds.values()):.3f}">{body}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="bertrio-parity" tests="{len(results)}" '
            f'failures="{n_fail}" errors="0" time="{total:.3f}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def run_cli(args: argparse.Namespace) -> int:
    path = args.checkpoint or default_checkpoint()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    backends = select_backends(_split(args.backends))
    dtypes = _split(args.dtype) or ["float32"]
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtype: {d!r} is not one of {list(DTYPES)}")
    devices = {"cpu": ["cpu"], "gpu": ["gpu"], "all": ["cpu", "gpu"]}[args.device]
    checks = _split(getattr(args, "checks", None)) or list(DEFAULT_CHECKS)
    for c in checks:
        if c not in CHECKS:
            raise ValueError(f"--checks: {c!r} is not one of {list(CHECKS)}")
    for dev in devices:
        for d in dtypes:
            if (d, dev) not in TOLERANCES:
                raise ValueError(f"no tolerance row for ({d}, {dev})")
    if args.batch < 1 or args.seq < 2:
        raise ValueError(f"--batch must be >= 1 and --seq >= 2, got {args.batch} and {args.seq}")
    train_steps = getattr(args, "train_steps", TRAIN_STEPS)
    if train_steps < 1:
        raise ValueError(f"--train-steps must be >= 1, got {train_steps}")
    missing_gpu = []
    if "gpu" in devices or args.require_gpu:
        missing_gpu = [b for b in backends if "gpu" not in adapter(b).devices()]
        if missing_gpu and (args.require_gpu or "gpu" in devices):
            print(f"bertrio parity: FAIL: no GPU visible to {', '.join(missing_gpu)} (--require-gpu / --device gpu)",
                  file=sys.stderr)
            return EXIT_MISMATCH
    heads = _split(args.heads)
    t0 = time.perf_counter()
    progress = sys.stderr.isatty() and not getattr(args, "quiet", False)
    results, env = run(path, backends, heads, dtypes, devices, checks, batch=args.batch, seq=args.seq,
                       progress=progress, train_steps=train_steps)
    env["seconds_total"] = time.perf_counter() - t0
    print(format_table(results, env))
    failures = [r for r in results if not r.passed]
    for r in failures:
        print(r.message())
    n = len(results)
    print(f"parity: {'PASS' if not failures else 'FAIL'} — {n - len(failures)} of {n} checks passed "
          f"({', '.join(backends)}; {env['seconds_total']:.1f}s)")
    if args.report:
        atomic_write_text(args.report, json.dumps({"environment": env, "passed": not failures,
                                                   "results": [r.to_json() for r in results]}, indent=1) + "\n")
    if args.junit:
        atomic_write_text(args.junit, to_junit(results, env))
    if args.markdown:
        atomic_write_text(args.markdown, to_markdown(results, env))
    return EXIT_OK if not failures else EXIT_MISMATCH
