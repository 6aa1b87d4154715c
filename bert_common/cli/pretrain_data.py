"""``bertrio pretrain-data INPUT [INPUT ...] --vocab VOCAB_TXT --output PATH``: raw text -> pretraining data.

Static (default): Google's ``create_pretraining_data.py`` reproduced exactly (same flags, same
instances), written as safetensors shards + manifest (default) or as Google's TFRecord of
``tf.train.Example`` s (``--format tfrecord``). ``--dynamic``: unmasked token blocks for the dynamic
masker (masks drawn per batch from (seed, epoch, example index)). Guide: ``docs/pretraining-data.md``.
"""
from __future__ import annotations

import argparse
import sys

from bert_common.cli.base import EXIT_OK

HELP = "make pretraining data (Google-exact static masks, or raw blocks for dynamic masking)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="UTF-8 text files: one sentence per line, a blank line between documents")
    p.add_argument("--vocab", required=True, help="vocab.txt (one word piece per line)")
    p.add_argument("--output", required=True,
                   help="output directory (safetensors) or file (tfrecord); written to a temp path, then renamed")
    p.add_argument("--format", choices=("safetensors", "tfrecord"), default="safetensors",
                   help="safetensors shards + manifest.json (default), or Google's TFRecord file")
    g = p.add_argument_group("Google's flags (create_pretraining_data.py)")
    g.add_argument("--max-seq-length", type=int, default=128)
    g.add_argument("--max-predictions-per-seq", type=int, default=20)
    g.add_argument("--random-seed", type=int, default=12345, help="also the dynamic masking seed with --dynamic")
    g.add_argument("--dupe-factor", type=int, default=10)
    g.add_argument("--masked-lm-prob", type=float, default=0.15, help="also the dynamic masking rate with --dynamic")
    g.add_argument("--short-seq-prob", type=float, default=0.1)
    g.add_argument("--whole-word-mask", action="store_true", help="mask whole words (## pieces join their word)")
    g.add_argument("--cased", action="store_true", help="keep case and accents (do_lower_case=False)")
    d = p.add_argument_group("dynamic masking (--dynamic)")
    d.add_argument("--dynamic", action="store_true",
                   help="write unmasked token blocks; masks are drawn per batch by open_dataset(...).batch()")
    d.add_argument("--no-nsp", action="store_true", help="--dynamic without next-sentence pairs")
    d.add_argument("--mask-token-rate", type=float, default=0.8, help="share of masked positions set to [MASK]")
    d.add_argument("--random-token-rate", type=float, default=0.1, help="share set to a random id (rest kept)")
    p.add_argument("--shard-size", help="safetensors shard size, e.g. 500MB (default 1GB)")
    p.add_argument("--per-file", action="store_true",
                   help="process each INPUT on its own (memory bounded by the largest file; equals running "
                        "Google's script once per file and concatenating)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from bert_common.pretraining.google import GoogleFlags
    from bert_common.pretraining.masking import MaskingConfig
    from bert_common.pretraining.pipeline import write_pretraining_data

    flags = GoogleFlags(max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
                        random_seed=args.random_seed, dupe_factor=args.dupe_factor,
                        masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
                        do_whole_word_mask=args.whole_word_mask, do_lower_case=not args.cased)
    masking = seed = None
    if args.dynamic:
        masking = MaskingConfig(mlm_probability=args.masked_lm_prob, mask_token_rate=args.mask_token_rate,
                                random_token_rate=args.random_token_rate,
                                whole_word="wordpiece" if args.whole_word_mask else None)
        seed = args.random_seed
    elif args.no_nsp or args.mask_token_rate != 0.8 or args.random_token_rate != 0.1:
        raise ValueError("--no-nsp, --mask-token-rate and --random-token-rate apply to --dynamic data only")
    summary = write_pretraining_data(args.inputs, args.vocab, args.output, format=args.format, flags=flags,
                                     shard_size=args.shard_size, per_file=args.per_file, dynamic=args.dynamic,
                                     nsp=not args.no_nsp, seed=seed, masking=masking, overwrite=args.overwrite,
                                     progress=not args.quiet)
    print(summary.line())
    print("files: " + ", ".join(summary.files), file=sys.stdout)
    return EXIT_OK
