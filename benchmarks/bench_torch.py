"""Inference time of bert_torch vs the Hugging Face oracle (transformers, SDPA), same weights and batch.

    .venv/bin/python benchmarks/bench_torch.py [--batch 8] [--seq 128] [--iters 10] [--device cpu|cuda]

BERT-base shapes (12 layers, hidden 768, 12 heads, intermediate 3072), random weights, fp32, one padded
row so both models take their masked SDPA path (``--no-padding`` for the unmasked one). Both models run
interleaved (ours, theirs, ours, ...) so machine load affects them alike; prints each median and the
ratio ours / HF (goal ≤ 1.0). Not a test: the oracle is a benchmark-only dependency.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bert_common.config import BertConfig
from bert_common.testing import random_weights
from bert_torch.modeling import build


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-padding", action="store_true", help="all-ones attention mask")
    args = p.parse_args()

    from conformance.adapters import hf as hf_adapter  # transformers: benchmark-only
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    config = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # BERT-base defaults
    state = random_weights(config, "BertModel", seed=0)
    ours = build("BertModel", config, state).to(args.device).eval()
    theirs = hf_adapter.build("BertModel", config, state, attn_implementation="sdpa").to(args.device).eval()

    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, config.vocab_size, (args.batch, args.seq))).to(args.device)
    mask = torch.ones_like(ids)
    if not args.no_padding:
        mask[-1, args.seq // 2:] = 0
    types = torch.zeros_like(ids)

    def run(model):
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    keep = mask.bool()
    diff = (run(ours) - run(theirs))[keep].abs().max().item()
    for _ in range(args.warmup):
        run(ours), run(theirs)
    t_ours, t_hf = [], []
    for _ in range(args.iters):
        t_ours.append(timed(lambda: run(ours), args.device))
        t_hf.append(timed(lambda: run(theirs), args.device))
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} seq={args.seq} fp32 "
          f"padding={'no' if args.no_padding else 'yes'} iters={args.iters}")
    print(f"max |Δ| last_hidden_state (kept positions) = {diff:.2e}")
    print(f"bert_torch (sdpa): median {mo * 1e3:8.1f} ms   (min {min(t_ours) * 1e3:.1f})")
    print(f"HF 4.57 (sdpa):    median {mh * 1e3:8.1f} ms   (min {min(t_hf) * 1e3:.1f})")
    print(f"ratio ours / HF = {mo / mh:.3f}  (goal <= 1.0)")


if __name__ == "__main__":
    main()
