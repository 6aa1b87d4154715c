"""ONNX Runtime (plain export, and with its BERT fusions) vs bert_torch eager, CPU, same weights and batch.

    .venv/bin/python benchmarks/bench_export.py [--shapes 1x128,8x128] [--iters 20] [--threads N]

BERT-base shapes (12 layers, hidden 768, 12 heads, intermediate 3072), random weights, fp32. The torch
model is exported by ``bert_torch.export`` twice (``bertrio export --to onnx`` without and with
``--optimize``); the three runners are timed interleaved (torch, ORT, ORT fused, torch, ...) so machine
load hits them alike, with the same number of intra-op threads. Prints each median and the ratios
ORT / torch eager (target <= 0.7 at batch 1). Not a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from bert_common.cli.export import export_artifact
from bert_common.config import BertConfig
from bert_common.testing import random_weights
from bert_torch.modeling import build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x128,8x128", help="comma list of BATCHxSEQ")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    config = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # BERT-base defaults
    model = build("BertModel", config, random_weights(config, "BertModel", seed=0)).eval()

    tmp = tempfile.TemporaryDirectory(prefix="bench-export-")
    sessions = {}
    for name, optimize in (("ORT", False), ("ORT fused", True)):
        path = os.path.join(tmp.name, name.replace(" ", "_"))
        os.mkdir(path)
        t = time.perf_counter()
        export_artifact(model, path, "onnx", **({"optimize": True} if optimize else {}))
        print(f"export {name}: {time.perf_counter() - t:.1f} s")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sessions[name] = ort.InferenceSession(os.path.join(path, "model.onnx"), opts,
                                              providers=["CPUExecutionProvider"])

    print(f"CPU, fp32, BERT-base, threads={args.threads}, iters={args.iters}, onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, seq = (int(x) for x in shape.lower().split("x"))
        ids = rng.integers(1, config.vocab_size, (batch, seq)).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def eager():
            with torch.inference_mode():
                return model(**tensors).last_hidden_state.numpy()

        runners = {"torch eager": eager,
                   **{name: (lambda s=s: s.run(["last_hidden_state"], feed)[0]) for name, s in sessions.items()}}
        ref = eager()
        diffs = {name: float(np.abs(fn() - ref).max()) for name, fn in runners.items() if name != "torch eager"}
        for _ in range(args.warmup):
            for fn in runners.values():
                fn()
        times = {name: [] for name in runners}
        for _ in range(args.iters):
            for name, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"\nbatch {batch} x seq {seq}")
        for name in runners:
            extra = f"   max |Δ| vs torch {diffs[name]:.1e}" if name in diffs else ""
            print(f"  {name:<12} median {med[name] * 1e3:8.1f} ms  (min {min(times[name]) * 1e3:.1f}){extra}")
        for name in sessions:
            print(f"  ratio {name} / torch eager = {med[name] / med['torch eager']:.3f}"
                  + ("  (target <= 0.7)" if batch == 1 else ""))


if __name__ == "__main__":
    main()
