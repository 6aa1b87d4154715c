"""Sentence embeddings on any backend's ``BertModel``: tokenise, batch by a token budget, pool, normalise.

``encode(model, tokenizer, texts)`` returns a float32 array of shape (N, H), row i for ``texts[i]``,
whatever the backend (torch, tf, flax): the model is called with NumPy inputs and its
``last_hidden_state`` (B, S, H) is pooled on the host in float32.

Batching: texts are tokenised once (truncated to ``max_length``), sorted by length, and cut into batches
of at most ``batch_tokens`` real tokens; results go back to input order. The model runs unpadded
(``attn_implementation="varlen"``, see ``bert_common.varlen``): its dense layers see real tokens only
and attention runs per sequence, so neither the batch's padding nor its shape costs anything. A token
budget (rather than a fixed row count) keeps every batch about the same cost; sorting keeps each
attention block's padding small. ``unpadded=False`` runs padded batches (rows × longest ≤ budget).

Pooling (sentence-transformers' definitions, so that the numbers match its ``encode``):

========  ===================================================================================
mean      sum of the kept tokens' states / number of kept tokens (attention_mask = 1)
cls       the state of the first token ([CLS])
max       element-wise max over the kept tokens
========  ===================================================================================

``normalize=True`` divides each row by max(‖row‖₂, 1e-12).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

POOLINGS = ("mean", "cls", "max")
DEFAULT_BATCH_TOKENS = 2048  # real tokens per forward; see docs/performance.md for the measurement

# How each backend runs a forward with no autograd bookkeeping (none needed where the framework records
# gradients only when asked: TF outside a GradientTape, JAX outside jax.grad).
_INFERENCE: dict[str, Callable[[], Any]] = {
    "bert_torch": lambda: importlib.import_module("torch").inference_mode(),
}


def inference_context(model: Any):
    package = type(model).__module__.split(".")[0]
    return _INFERENCE.get(package, contextlib.nullcontext)()


def _host(x: Any) -> np.ndarray:
    """A framework array on the host as float32 NumPy (torch tensors via ``.numpy()``)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """(B, S, H) float32 states and (B, S) 0/1 mask -> (B, H) float32 (see the module table)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    hidden = np.asarray(hidden, dtype=np.float32)
    keep = np.asarray(mask, dtype=np.float32)[:, :, None]                                  # B,S,1
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return np.where(keep > 0, hidden, np.float32(-1e9)).max(axis=1)
    return (hidden * keep).sum(axis=1) / np.maximum(keep.sum(axis=1), np.float32(1e-9))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by max(L2 norm, 1e-12), float32 (N, H) -> (N, H)."""
    norm = np.sqrt(np.sum(np.square(x, dtype=np.float32), axis=1, keepdims=True))
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)


def plan_batches(lengths: Sequence[int], batch_tokens: int, unpadded: bool = False) -> list[np.ndarray]:
    """Indices grouped into batches, sorted by length (longest first, stable). A batch costs rows × its
    longest length (padded execution) or the sum of its lengths (``unpadded``: the model drops padding);
    each batch costs ≤ ``batch_tokens`` (a single row longer than the budget gets a batch of its own)."""
    if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        if unpadded:
            spent = np.cumsum(np.maximum(lengths[order[start:]], 1))
            rows = max(1, int(np.searchsorted(spent, batch_tokens, side="right")))
        else:
            longest = int(lengths[order[start]])           # sorted descending: the first row is the longest
            rows = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start:start + rows])
        start += rows
    return batches


@contextlib.contextmanager
def attention_implementation(model: Any, impl: str | None):
    """Run ``model`` with ``config.attn_implementation = impl`` inside the block (every backend reads it
    per call), restoring the previous value after. ``None`` leaves the model as it is."""
    config = model.config
    previous = config.attn_implementation
    if impl is not None:
        config.attn_implementation = impl
    try:
        yield model
    finally:
        config.attn_implementation = previous


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (ids, mask), both (B, S) int32, right-padded."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def encode_ids(model: Any, ids: Sequence[Sequence[int]], *, pooling: str = "mean", normalize: bool = False,
               batch_tokens: int = DEFAULT_BATCH_TOKENS, pad_token_id: int = 0, unpadded: bool = True,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Token-id lists (with [CLS]/[SEP]) -> (N, H) float32 embeddings, in input order.

    ``unpadded`` (default) runs the model with ``attn_implementation="varlen"``: every dense layer sees
    only real tokens, so a batch is cut by its real tokens; ``False`` runs the model's own attention on
    padded batches (rows × longest ≤ ``batch_tokens``).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    hidden_size = int(model.config.hidden_size)
    out = np.zeros((len(ids), hidden_size), dtype=np.float32)
    with attention_implementation(model, "varlen" if unpadded else None):
        for batch in plan_batches([len(r) for r in ids], batch_tokens, unpadded):
            input_ids, mask = pad_rows([list(ids[i]) for i in batch], pad_token_id)
            with inference_context(model):
                hidden = model(input_ids=input_ids, attention_mask=mask,
                               token_type_ids=np.zeros_like(input_ids)).last_hidden_state
            out[batch] = pool(_host(hidden), mask, pooling)
            if progress is not None:
                progress(len(batch))
    return normalize_rows(out) if normalize else out


def encode(model: Any, tokenizer: Any, texts: Sequence[str], *, pooling: str = "mean", normalize: bool = False,
           max_length: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS, unpadded: bool = True,
           progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed ``texts`` with a ``BertModel`` of any backend -> (len(texts), H) float32, in input order.

    ``max_length`` (default: the smaller of the tokenizer's ``model_max_length`` and the model's
    ``max_position_embeddings``) truncates longer texts; ``truncated_count(tokenizer, texts, max_length)``
    tells how many were cut.
    """
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(t).__name__}")
    ids, _ = tokenize(tokenizer, texts, resolve_max_length(model, tokenizer, max_length))
    return encode_ids(model, ids, pooling=pooling, normalize=normalize, batch_tokens=batch_tokens,
                      pad_token_id=int(tokenizer.pad_token_id), unpadded=unpadded, progress=progress)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """(ids with [CLS]/[SEP], truncated to ``max_length``; how many texts were longer than that).

    Tokenises once with a budget of one token more than ``max_length``: a row that fills it was too long,
    and dropping its last content token gives exactly the ``truncation=True, max_length=max_length`` ids.
    """
    if not texts:
        return [], 0
    rows = tokenizer(list(texts), truncation=True, max_length=max_length + 1, padding=False)["input_ids"]
    cut = 0
    for i, r in enumerate(rows):
        if len(r) > max_length:
            rows[i] = r[:max_length - 1] + r[-1:]
            cut += 1
    return rows, cut


def resolve_max_length(model: Any, tokenizer: Any, max_length: int | None) -> int:
    """``max_length`` checked against the model's limit, or that limit when None."""
    model_limit = int(model.config.max_position_embeddings)
    limit = min(int(getattr(tokenizer, "model_max_length", model_limit)), model_limit)
    if max_length is None:
        return limit
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= model_limit:
        raise ValueError(f"max_length must be an integer in [2, max_position_embeddings={model_limit}], "
                         f"got {max_length!r}")
    return max_length


# sentence-transformers' pooling flags (1_Pooling/config.json) -> our pooling names.
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def checkpoint_defaults(path: str) -> dict[str, Any]:
    """Embedding settings a sentence-transformers checkpoint directory declares, so that ``bertrio embed``
    reproduces its ``encode`` by default: ``max_length`` (sentence_bert_config.json ``max_seq_length``),
    ``pooling`` (1_Pooling/config.json, when exactly one of mean/cls/max is on) and ``normalize`` (a
    ``Normalize`` module in modules.json). Missing files give no entry."""
    import json
    import os

    def load(*parts):
        file = os.path.join(path, *parts)
        if not os.path.isfile(file):
            return None
        with open(file, encoding="utf-8") as f:
            return json.load(f)

    out: dict[str, Any] = {}
    sbert = load("sentence_bert_config.json")
    if isinstance(sbert, dict) and isinstance(sbert.get("max_seq_length"), int):
        out["max_length"] = sbert["max_seq_length"]
    pooling = load("1_Pooling", "config.json")
    if isinstance(pooling, dict):
        on = [name for flag, name in _ST_POOLING.items() if pooling.get(flag)]
        if len(on) == 1 and not pooling.get("pooling_mode_mean_sqrt_len_tokens"):
            out["pooling"] = on[0]
    modules = load("modules.json")
    if isinstance(modules, list):
        out["normalize"] = any(isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in modules)
    return out


def read_lines(path: str, chunk_lines: int = 4096) -> Iterator[list[str]]:
    """Lines of a UTF-8 text file (one text per line, line ends stripped; empty lines kept) in chunks.

    Raises ValueError naming the file and the 1-based line number of the first line that is not UTF-8.
    """
    chunk: list[str] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {number} is not UTF-8 ({e.reason} at byte {e.start})") from None
            chunk.append(line.rstrip("\r\n"))
            if len(chunk) == chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def count_lines(path: str) -> int:
    """Number of texts in a one-text-per-line file (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


__all__ = ["encode", "encode_ids", "tokenize", "checkpoint_defaults", "pool", "normalize_rows", "plan_batches", "read_lines", "count_lines",
           "resolve_max_length", "pad_rows", "inference_context", "attention_implementation", "POOLINGS"]
