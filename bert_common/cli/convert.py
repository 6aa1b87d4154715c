"""``bertrio convert SRC DST --to FORMAT``: convert a checkpoint between formats (see ``bert_common.convert``)."""
from __future__ import annotations

import argparse

from bert_common.cli.base import EXIT_OK
from bert_common.convert import convert_checkpoint

HELP = "convert a checkpoint between formats"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint directory, weight file or Google checkpoint prefix")
    p.add_argument("dst", help="output directory (written to a temp dir, then renamed)")
    p.add_argument("--to", default="safetensors",
                   help="safetensors (default), pytorch, tf-h5, flax-msgpack or google-ckpt")
    p.add_argument("--config", help="config.json / bert_config.json when SRC has none")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="cast floating tensors")
    p.add_argument("--shard-size", help="split the output into HF-named shards of at most this size, e.g. 2GB "
                                        "(safetensors, pytorch, tf-h5, flax-msgpack)")
    p.add_argument("--model-class", help="head class, when it cannot be inferred from the tensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing DST (atomically: DST is never absent, even after a crash)")


def run(args: argparse.Namespace) -> int:
    summary = convert_checkpoint(args.src, args.dst, to=args.to, config=args.config, dtype=args.dtype,
                                 shard_size=args.shard_size, model_class=args.model_class,
                                 overwrite=args.overwrite, progress=True)
    print(summary.line())
    print("files: " + ", ".join(summary.files))
    return EXIT_OK
