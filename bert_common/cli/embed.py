"""``bertrio embed CHECKPOINT INPUT.txt --output OUT.npy``: sentence embeddings, one text per line.

Streams the input in chunks (memory is bounded by ``--batch-tokens`` and the chunk size, not by the
corpus), writes a float32 ``.npy`` of shape (N, hidden) through a temporary file renamed into place, row i
for line i (empty lines included). Texts longer than the model's maximum are truncated and that is said once.
"""
from __future__ import annotations

import argparse
import os
import sys

from bert_common.cli.base import EXIT_OK

HELP = "sentence embeddings of a text file (one text per line) into a .npy"
CHUNK_LINES = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory with config.json, weights and vocab.txt")
    p.add_argument("input", help="UTF-8 text file, one text per line")
    p.add_argument("--output", required=True, help="where to write the (N, hidden) float32 .npy")
    p.add_argument("--backend", default=None, help="torch, tf or flax (default: $BERT_BACKEND, else the first installed)")
    p.add_argument("--pooling", default=None, choices=("mean", "cls", "max"),
                   help="default: what a sentence-transformers checkpoint declares, else mean")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise each embedding (default: as the checkpoint declares, else off)")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate texts to this many tokens (default: the checkpoint's sentence-transformers "
                        "max_seq_length, else the model's maximum)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="real tokens per forward (the model runs unpadded), default 2048")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from bert_common import embeddings
    from bert_common.backend import backend_module
    from bert_common.io_utils import atomic_file
    from bert_common.tokenizers.fast import BertTokenizerFast

    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"INPUT {args.input} not found")
    if args.batch_tokens is None:
        args.batch_tokens = embeddings.DEFAULT_BATCH_TOKENS
    if args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be a positive integer, got {args.batch_tokens}")
    if not args.output.endswith(".npy"):
        raise ValueError(f"--output {args.output!r} must end in .npy")
    for chunk in embeddings.read_lines(args.input):  # validate the whole file first: nothing written on bad input
        pass
    n = embeddings.count_lines(args.input)
    declared = embeddings.checkpoint_defaults(args.checkpoint)
    pooling = args.pooling or declared.get("pooling", "mean")
    normalize = args.normalize if args.normalize is not None else declared.get("normalize", False)
    max_length = args.max_length if args.max_length is not None else declared.get("max_length")
    model = backend_module(args.backend).BertModel.from_pretrained(args.checkpoint)
    tokenizer = BertTokenizerFast.from_pretrained(args.checkpoint)
    limit = embeddings.resolve_max_length(model, tokenizer, max_length)
    hidden = int(model.config.hidden_size)
    bar = tqdm(total=n, unit="text", desc="embed", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty())
    truncated = done = 0
    with atomic_file(args.output, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                 "fortran_order": False, "shape": (n, hidden)})
        for chunk in embeddings.read_lines(args.input, CHUNK_LINES):
            ids, cut = embeddings.tokenize(tokenizer, chunk, limit)
            truncated += cut
            vectors = embeddings.encode_ids(model, ids, pooling=pooling, normalize=normalize,
                                            batch_tokens=args.batch_tokens, pad_token_id=int(tokenizer.pad_token_id),
                                            progress=bar.update)
            f.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            done += len(chunk)
    bar.close()
    if done != n:  # the file changed while we read it
        os.unlink(args.output)
        raise ValueError(f"INPUT {args.input} changed while it was read ({n} lines counted, {done} embedded)")
    if truncated:
        print(f"bertrio embed: {truncated} of {n} texts were longer than {limit} tokens and were truncated",
              file=sys.stderr)
    print(f"wrote {args.output}: {n} x {hidden} float32 ({pooling} pooling, max {limit} tokens"
          f"{', normalized' if normalize else ''})")
    return EXIT_OK
