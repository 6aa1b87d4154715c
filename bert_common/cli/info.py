"""``bertrio info CHECKPOINT``: summarise a checkpoint directory."""
from __future__ import annotations

import argparse
import os

from bert_common import weights
from bert_common.checkpoint import load_checkpoint
from bert_common.cli.base import EXIT_OK, default_checkpoint
from bert_common.formats import detect_formats

HELP = "summarise a checkpoint directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: the embedded MiniLM)")


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.1f}T"


def run(args: argparse.Namespace) -> int:
    path = args.checkpoint or default_checkpoint()
    config, state, fmt = load_checkpoint(path)
    present = detect_formats(path)
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
