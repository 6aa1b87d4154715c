"""Memory and time of ``bertrio convert`` on a synthetic BERT-base checkpoint.

    python benchmarks/bench_convert.py [--workdir DIR] [--layers 12] [--formats pytorch,tf-h5,...] [--markdown FILE]
    python benchmarks/bench_convert.py --hostile [--workdir DIR]

``--hostile`` instead measures ``bertrio convert`` on the pathological files of issue 17 (generated
here): peak RSS, seconds and the error it exits with. Each must be refused quickly, in little memory.

Writes a random BERT-base ``BertForPreTraining`` checkpoint (vocab 30522, hidden 768, 12 layers, fp32,
~440 MB) as safetensors, then for each format converts safetensors -> format and format -> safetensors,
each in a fresh subprocess. For each run it records

- ``baseline``: the process's RSS after importing what the conversion needs (bertrio and the format's
  framework), before any tensor is read;
- ``peak``: the process's peak RSS (``VmHWM``) at the end;
- ``(peak - baseline) / checkpoint size``: the goal is <= 1.5;
- wall seconds of ``convert_checkpoint`` alone.

Memory-mapped input pages count in RSS, as they do for the user's machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ALL = ("pytorch", "tf-h5", "flax-msgpack", "google-ckpt")
# What each format's reader/writer imports, imported before the baseline is taken.
IMPORTS = {"safetensors": [], "pytorch": ["torch"], "tf-h5": ["h5py"], "flax-msgpack": ["msgpack"],
           "google-ckpt": ["tensorflow"]}

CHILD = r"""
import importlib, json, os, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
src, dst, to, mods = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",") if sys.argv[4] else []
import numpy, bert_common.convert, bert_common.formats, bert_common.checkpoint
for m in mods:
    importlib.import_module(m)
base = rss("VmRSS:")
t = time.perf_counter()
s = bert_common.convert.convert_checkpoint(src, dst, to=to)
sec = time.perf_counter() - t
print(json.dumps({"baseline": base, "peak": rss("VmHWM:"), "seconds": sec, "bytes": s.bytes,
                  "tensors": s.tensors}))
"""


def make_source(directory: str, layers: int) -> tuple[str, int]:
    import numpy as np

    from bert_common.checkpoint import save_checkpoint
    from bert_common.config import BertConfig
    from bert_common.weights import canonical_shapes

    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(s, dtype=np.float32) * 0.02
             for n, s in canonical_shapes(cfg, "BertForPreTraining").items()}
    path = os.path.join(directory, "src-safetensors")
    save_checkpoint(path, cfg, state, architectures=["BertForPreTraining"])
    return path, os.path.getsize(os.path.join(path, "model.safetensors"))


def run(src: str, dst: str, to: str, mods: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, src, dst, to, ",".join(mods)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{src} -> {to} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = time.perf_counter() - t
    return res


HOSTILE_CHILD = r"""
import json, sys, time
from bert_common.cli import build_parser, main
import bert_common.convert, bert_common.formats.tf_h5, bert_common.formats.flax_msgpack
build_parser()  # imported before timing: only the conversion itself is measured
for m in ("h5py", "msgpack"):
    __import__(m)
t = time.perf_counter()
rc = main(["convert", sys.argv[1], sys.argv[2]])
sec = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"rc": rc, "seconds": sec, "peak": int(hwm) * 1024}))
"""


def make_hostile(work: str) -> dict[str, str]:
    """{case: checkpoint dir} for the pathological inputs of issue 17 (tiny config beside each)."""
    import struct

    import numpy as np

    from bert_common.config import BertConfig
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    cases: dict[str, str] = {}

    def case(name: str) -> str:
        d = os.path.join(work, name)
        os.makedirs(d)
        cfg.save_pretrained(d)
        cases[name] = d
        return d

    d = case("safetensors: 10^6 zero-size entries")
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(10**6)})
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
    d = case("safetensors: I32 weight")
    header = json.dumps({"embeddings.word_embeddings.weight": {"dtype": "I32", "shape": [99, 32],
                                                               "data_offsets": [0, 99 * 32 * 4]}})
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode() + bytes(99 * 32 * 4))
    try:
        import h5py
        for n in (2**29, 2**38):
            d = case(f"h5: chunked ({n},) dataset")
            with h5py.File(os.path.join(d, "tf_model.h5"), "w") as f:
                f.attrs["layer_names"] = np.array([b"bert"])
                g = f.create_group("bert")
                key = "tf_bert_model/bert/embeddings/word_embeddings/weight:0"
                g.attrs["weight_names"] = np.array([key.encode()])
                g.create_dataset(key, shape=(n,), dtype="f4", chunks=(4096,), fillvalue=1.0)
    except ImportError:
        pass
    d = case("msgpack: nested 1000 deep")
    with open(os.path.join(d, "flax_model.msgpack"), "wb") as f:
        f.write(b"\x81\xa1a" * 1000 + b"\x80")
    d = case("config.json: 50 MB")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({**cfg.to_dict(), "junk": [{"k": i} for i in range(3 * 10**6)]}, f)
    d = case("config.json: 100,000-deep list")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"hidden_size": 32, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return cases


def hostile(workdir: str | None) -> int:
    with tempfile.TemporaryDirectory(dir=workdir) as work:
        cases = make_hostile(work)
        print(f"| input | file size | exit | seconds | peak RSS (MiB) |\n|---|---:|---:|---:|---:|")
        for name, d in cases.items():
            size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            out = subprocess.run([sys.executable, "-c", HOSTILE_CHILD, d, os.path.join(work, "out")],
                                 capture_output=True, text=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            err = out.stderr.strip().splitlines()[-1][:110] if out.stderr.strip() else ""
            print(f"| {name} | {size / 2**20:.1f} MiB | {res['rc']} | {res['seconds']:.2f} | "
                  f"{res['peak'] / 2**20:.0f} |  {err}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where to write checkpoints (default: a temp dir, removed after)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--formats", default=",".join(ALL))
    p.add_argument("--markdown", help="append the result table to this file")
    p.add_argument("--hostile", action="store_true", help="measure the pathological inputs instead")
    args = p.parse_args(argv)
    if args.hostile:
        return hostile(args.workdir)
    fmts = [f for f in args.formats.split(",") if f]
    bad = [f for f in fmts if f not in ALL]
    if bad:
        raise SystemExit(f"--formats {bad} not in {ALL}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        src, size = make_source(work, args.layers)
        rows = []
        for fmt in fmts:
            mid = os.path.join(work, fmt)
            back = os.path.join(work, fmt + "-back")
            for a, b, to, path in ((src, mid, fmt, "safetensors"), (mid, back, "safetensors", fmt)):
                r = run(a, b, to, IMPORTS["safetensors"] + IMPORTS[fmt])
                name = f"safetensors -> {fmt}" if to == fmt else f"{fmt} -> safetensors"
                ratio = (r["peak"] - r["baseline"]) / size
                rows.append((name, r["baseline"] / 2**20, r["peak"] / 2**20, ratio, r["seconds"],
                             r["bytes"] / 2**20))
                print(f"{name:<28} baseline {rows[-1][1]:7.0f} MiB  peak {rows[-1][2]:7.0f} MiB  "
                      f"(peak-baseline)/size {ratio:4.2f}  {r['seconds']:6.2f} s  out {rows[-1][5]:.0f} MiB",
                      flush=True)
            with open(os.path.join(back, "model.safetensors"), "rb") as f1, \
                    open(os.path.join(src, "model.safetensors"), "rb") as f2:
                same = f1.read() == f2.read()
            print(f"  {fmt} round trip byte-identical: {same}")
            if not same:
                return 1
    table = ["| conversion | baseline RSS (MiB) | peak RSS (MiB) | (peak - baseline) / checkpoint | seconds |",
             "|---|---:|---:|---:|---:|"]
    table += [f"| {n} | {b:.0f} | {pk:.0f} | {r:.2f} | {s:.2f} |" for n, b, pk, r, s, _ in rows]
    text = (f"\nCheckpoint: BertForPreTraining, {args.layers} layers, fp32, {size / 2**20:.0f} MiB "
            f"({size:,} bytes)\n\n" + "\n".join(table) + "\n")
    print(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
