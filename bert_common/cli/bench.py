"""``bertrio bench CHECKPOINT``: tokens/s of our forward paths against Hugging Face and sentence-transformers.

Measured interleaved in one process (every method once per round, ``--rounds`` rounds, median reported) so
that machine load hits all of them alike:

==================  ==========================================================================================
ours-padded         ``BertModel`` of ``--backend`` on batches of ``--batch-size`` texts in input order, padded to
                    the longest (what Hugging Face users do by default)
ours-varlen         the same input-order batches with ``attn_implementation="varlen"``: the model drops the
                    padding itself (dense layers on real tokens, attention per sequence)
ours-encode         ``bert_common.embeddings.encode``: length-sorted batches of ``--batch-tokens`` real
                    tokens, run unpadded (``varlen``)
hf-padded           transformers' torch ``BertModel`` (its default attention) on the same padded batches
                    (only when transformers is installed; benchmark-only oracle)
st-encode           sentence-transformers' ``encode`` with ``--batch-size`` (only when installed)
==================  ==========================================================================================

tokens/s counts real (non-padding) tokens, so padding is a cost, not a throughput. ``--fixed B S`` instead
times one same-shape forward (random ids) of ours against HF's. The default corpus is ordinary English
documentation: the sentences of the Python standard library's docstrings (``default_corpus``).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

from bert_common.cli.base import EXIT_OK, default_checkpoint

HELP = "tokens/s of our padded and unpadded paths against Hugging Face and sentence-transformers"
CORPUS_MODULES = ("argparse", "collections", "json", "os", "pathlib", "re", "shutil", "subprocess", "tempfile",
                  "textwrap", "typing", "functools", "itertools", "logging", "datetime", "decimal", "fractions",
                  "statistics", "string", "zipfile", "tarfile", "csv", "configparser", "heapq", "bisect",
                  "contextlib", "dataclasses", "enum", "inspect", "ipaddress", "unittest", "difflib")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: the embedded MiniLM)")
    p.add_argument("--backend", default=None, help="torch, tf or flax (default: $BERT_BACKEND, else the first installed)")
    p.add_argument("--input", help="text file, one text per line (default: Python standard library docstrings)")
    p.add_argument("--limit", type=int, default=2000, help="use the first N texts (default 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per padded batch (default 32)")
    p.add_argument("--batch-tokens", type=int, default=2048,
                   help="real tokens per forward of the encode path (default 2048, as bertrio embed)")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--fixed", nargs=2, type=int, metavar=("B", "S"), help="time a same-shape forward instead")
    p.add_argument("--base-size", action="store_true",
                   help="with --fixed: randomly initialised BERT-base shapes (12 layers, hidden 768, 12 heads, "
                        "intermediate 3072; vocab and limits of the checkpoint) instead of the checkpoint's weights")


def default_corpus(limit: int) -> list[str]:
    """Sentences (3+ words) from the docstrings of ``CORPUS_MODULES``, in a fixed order."""
    import importlib
    import inspect

    texts: list[str] = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or callable(obj)) else None
            if not doc or getattr(obj, "__module__", name) not in (name, None):
                continue
            for para in doc.split("\n\n"):
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                    if len(sentence.split()) >= 3 and sentence not in texts:
                        texts.append(sentence)
                        if len(texts) >= limit:
                            return texts
    return texts


def _median_rate(samples: list[float], tokens: int) -> float:
    return tokens / statistics.median(samples)


def run(args: argparse.Namespace) -> int:
    from bert_common import embeddings
    from bert_common.backend import backend_module, get_backend
    from bert_common.tokenizers.fast import BertTokenizerFast

    path = args.checkpoint or default_checkpoint()
    for flag in ("limit", "batch_size", "batch_tokens", "rounds"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.device == "gpu":
        raise ValueError("--device gpu: this build measures on CPU only (no GPU runtime was available to test it)")
    backend = args.backend or get_backend()
    os.environ.setdefault("USE_TF", "0")  # transformers' TF half needs tf-keras; only its torch classes are used
    if args.base_size and not args.fixed:
        raise ValueError("--base-size applies to --fixed B S only")
    if args.fixed:
        return _bench_fixed(path, args, backend)
    model = backend_module(backend).BertModel.from_pretrained(path)
    tok = BertTokenizerFast.from_pretrained(path)
    peers = _load_peers(path)

    if args.input:
        texts = [t for chunk in embeddings.read_lines(args.input) for t in chunk][:args.limit]
    else:
        texts = default_corpus(args.limit)
    ids, _ = embeddings.tokenize(tok, texts, embeddings.resolve_max_length(model, tok, args.max_length))
    real = sum(len(r) for r in ids)
    batches = [embeddings.pad_rows(ids[i:i + args.batch_size], int(tok.pad_token_id))
               for i in range(0, len(ids), args.batch_size)]
    padded = sum(b[0].size for b in batches)
    methods = {
        "ours-padded": lambda: [_forward(model, b) for b in batches],
        "ours-varlen": lambda: [_forward(model, b, "varlen") for b in batches],
        "ours-encode": lambda: embeddings.encode_ids(model, ids, batch_tokens=args.batch_tokens,
                                                     pad_token_id=int(tok.pad_token_id)),
    }
    if "hf" in peers:
        methods["hf-padded"] = lambda: [_hf_forward(peers["hf"], b) for b in batches]
    if "st" in peers:
        peers["st"].max_seq_length = args.max_length
        methods["st-encode"] = lambda: peers["st"].encode(texts, batch_size=args.batch_size)
    for fn in methods.values():  # warm-up: compile caches, allocator, thread pools
        fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"corpus: {len(texts)} texts, {real} real tokens, {1 - real / padded:.0%} padding in input-order "
          f"batches of {args.batch_size}; backend {backend}; {args.rounds} interleaved rounds, median")
    rates = {m: _median_rate(t, real) for m, t in times.items()}
    print(f"{'method':<12}  {'tokens/s':>10}  {'vs hf-padded':>12}  {'vs st-encode':>12}")
    for name, rate in rates.items():
        vs_hf = f"{rate / rates['hf-padded']:.2f}x" if "hf-padded" in rates else "-"
        vs_st = f"{rate / rates['st-encode']:.2f}x" if "st-encode" in rates else "-"
        print(f"{name:<12}  {rate:>10.0f}  {vs_hf:>12}  {vs_st:>12}")
    return EXIT_OK


def _forward(model, batch, attn_implementation=None):
    """One forward, its output brought to the host as NumPy: JAX (and TF on a device) return before the
    work is done, so a timing that stops at the call would measure dispatch, not compute."""
    from bert_common.embeddings import _host, attention_implementation, inference_context
    ids, mask = batch
    with attention_implementation(model, attn_implementation), inference_context(model):
        return _host(model(input_ids=ids, attention_mask=mask, token_type_ids=ids * 0).last_hidden_state)


def _load_peers(path: str) -> dict:
    """The benchmark-only peers that are installed: HF's torch BertModel and sentence-transformers."""
    peers: dict = {}
    try:
        import torch  # noqa: F401
        from transformers import BertModel as HFBertModel
        peers["hf"] = HFBertModel.from_pretrained(path).eval()
    except ImportError:
        print("bertrio bench: transformers (torch) not installed; skipping hf-padded", file=sys.stderr)
    try:
        from sentence_transformers import SentenceTransformer
        peers["st"] = SentenceTransformer(path, device="cpu")
    except ImportError:
        print("bertrio bench: sentence-transformers not installed; skipping st-encode", file=sys.stderr)
    return peers


def _hf_forward(model, batch):
    import torch
    ids, mask = batch
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids.astype("int64")),
                     attention_mask=torch.from_numpy(mask.astype("int64"))).last_hidden_state.numpy()


# BERT-base's shape (Devlin et al. 2019); weights are random, which does not change a timing.
BASE_SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def _bench_fixed(path, args, backend) -> int:
    """Same-shape forward of ours (``--backend``), Hugging Face's torch BERT and, for TF and Flax, ours in
    torch (the issue's yardstick for TF), interleaved, median of >= 5 runs."""
    import numpy as np

    from bert_common.backend import backend_module
    from bert_common.config import BertConfig

    b, s = args.fixed
    config = BertConfig.from_pretrained(path)
    if args.base_size:
        config = BertConfig.from_dict({**config.to_dict(), **BASE_SHAPE})
    if b < 1 or not 1 <= s <= config.max_position_embeddings:
        raise ValueError(f"--fixed B S: need B >= 1 and 1 <= S <= {config.max_position_embeddings}, got {b} {s}")

    def ours(name):
        cls = backend_module(name).BertModel
        return cls(config) if args.base_size else cls.from_pretrained(path)

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, config.vocab_size, size=(b, s)).astype(np.int32)
    batch = (ids, np.ones_like(ids))
    model = ours(backend)
    methods = {"ours": lambda: _forward(model, batch)}
    if backend != "torch":
        try:
            torch_model = ours("torch")
            methods["ours-torch"] = lambda: _forward(torch_model, batch)
        except ImportError:
            pass
    try:
        import torch  # noqa: F401
        from transformers import BertConfig as HFConfig, BertModel as HFBertModel
        hf = (HFBertModel(HFConfig(**config.to_dict())) if args.base_size
              else HFBertModel.from_pretrained(path)).eval()
        methods["hf"] = lambda: _hf_forward(hf, batch)
    except ImportError:
        print("bertrio bench: transformers (torch) not installed; no hf figure", file=sys.stderr)
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(max(args.rounds, 5)):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    shape = "BERT-base shapes, random weights" if args.base_size else os.path.basename(os.path.normpath(path))
    print(f"same-shape forward {b}x{s} ({shape}), backend {backend}, median of {len(times['ours'])} interleaved runs")
    for name, t in med.items():
        ratios = [f"{t / med[ref]:.3f}x {ref} time" for ref in ("hf", "ours-torch") if ref in med and ref != name]
        print(f"{name:<10} {t * 1000:9.2f} ms  {'  '.join(ratios)}")
    return EXIT_OK
