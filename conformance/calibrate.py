"""Measure the numbers the tolerance table rests on: ``python -m conformance.calibrate [--minilm] ...``.

For every case and check it runs the selected backends and the float64 truth (``Runner``), and records,
per tensor and backend pair, RMS(a − b) / σ_rms and max|a − b| / σ_max: how many of the tensor's own
fp noise scales two correct backends are apart. The largest of those ratios, per check kind and dtype,
is what the ``rms`` / ``max`` multipliers of ``conformance.tolerances`` must exceed with headroom
(docs/tolerances.md shows a run). Nothing here is used by ``bertrio parity``.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bert_common.testing import VARIANTS, tiny_config
from bert_common.weights import HEADS
from conformance.suite import ALL_BACKENDS, Runner, available_backends, plan, run_plan

KIND = {"forward": "outputs", "half": "outputs", "cache": "outputs", "train_mode": "outputs", "grads": "grads",
        "adamw": "step"}


def bert_base_checkpoint(path: str, seed: int = 0) -> str:
    """A checkpoint with BERT-base shapes (12 x 768, 3072, vocab 30522) and random weights at ``path``."""
    from bert_common.checkpoint import save_checkpoint
    from bert_common.testing import random_weights
    cfg = tiny_config("absolute", vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
    state = random_weights(cfg, "BertForPreTraining", seed=seed)
    # BERT's own initialisation scale (0.02) for matrices, so activations stay in BERT's range.
    state = {k: (v * 0.1 if v.ndim == 2 else v).astype(np.float32) for k, v in state.items()}
    save_checkpoint(path, cfg, state)
    return path


def summarise(results) -> dict:
    """Per (check kind, dtype): the largest ratios seen, and the tensors they came from."""
    out: dict = {}
    for r in results:
        key = f"{KIND.get(r.check, r.check)}/{r.dtype}"
        s = out.setdefault(key, {"max_ratio_rms": 0.0, "max_ratio_max": 0.0, "tensors": 0, "worst_rms": None,
                                 "worst_max": None, "ratios_rms": []})
        for d in r.diffs:
            if not np.isfinite(d.ratio_rms):
                continue
            s["tensors"] += 1
            s["ratios_rms"].append(d.ratio_rms)
            where = f"{r.check} {r.pair[0]} vs {r.pair[1]} {r.model_class}/{r.variant}: {d.path}"
            if d.ratio_rms > s["max_ratio_rms"]:
                s["max_ratio_rms"], s["worst_rms"] = d.ratio_rms, where
            if d.ratio_max > s["max_ratio_max"]:
                s["max_ratio_max"], s["worst_max"] = d.ratio_max, where
    for s in out.values():
        r = np.asarray(s.pop("ratios_rms"))
        s["p50_ratio_rms"], s["p99_ratio_rms"] = (float(np.percentile(r, 50)), float(np.percentile(r, 99))) \
            if r.size else (0.0, 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="*", help="checkpoint directories (cases of every head: --heads all)")
    p.add_argument("--tiny", action="store_true", help="also the tiny-config matrix of conformance/test_parity.py")
    p.add_argument("--bert-base", metavar="DIR", help="write a random BERT-base-shaped checkpoint here and run it")
    p.add_argument("--backends", default=",".join(available_backends(ALL_BACKENDS)))
    p.add_argument("--checks", default="forward,grads,adamw")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--heads", default="all")
    p.add_argument("--json", help="write every result here")
    args = p.parse_args(argv)
    from conformance.cases import checkpoint_cases, tiny_case
    backends = args.backends.split(",")
    checks, dtypes = args.checks.split(","), args.dtype.split(",")
    runner = Runner(backends)
    results = []
    groups = []
    if args.tiny:
        cases = [tiny_case(v, c) for v in VARIANTS for c in HEADS]
        groups.append(("tiny", cases, [c for c in cases if c.model_class != "BertModel"]))
    paths = list(args.checkpoint)
    if args.bert_base:
        paths.append(bert_base_checkpoint(args.bert_base))
    for path in paths:
        heads = None if args.heads == "default" else args.heads.split(",")
        cases = checkpoint_cases(path, heads)
        groups.append((path, cases, [c for c in cases if c.model_class != "BertModel"]))
    for name, cases, loss_cases in groups:
        print(f"{name}: {len(cases)} cases", file=sys.stderr)
        results += run_plan(runner, plan(cases, loss_cases, checks, dtypes), progress=sys.stderr.isatty())
    summary = summarise(results)
    print(json.dumps(summary, indent=1))
    fails = [r.message() for r in results if not r.passed]
    print(f"{len(results)} results, {len(fails)} failing under the current table", file=sys.stderr)
    for m in fails:
        print(m, file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "seconds": runner.seconds, "results": [r.to_json() for r in results]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
