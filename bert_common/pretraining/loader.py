"""The framework-free batch stream every loader walks (torch, TensorFlow and JAX wrap this).

``iterate_batches(ds, batch_size, seed, epoch, ...)`` yields, in order, ``ds.batch(indices, epoch)`` for
the batches of ``epoch_batches`` (row order ``default_rng([seed, epoch]).permutation(len(ds))``). Batch
contents depend on (seed, epoch, row index) only, so any worker count gives the same stream.
"""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from bert_common.pretraining.shards import PretrainingDataset, epoch_batches, open_dataset


def as_dataset(data) -> PretrainingDataset:
    """A dataset object (anything with ``__len__`` and ``batch``), or a path opened with ``open_dataset``."""
    if hasattr(data, "batch") and hasattr(data, "__len__"):
        return data
    return open_dataset(data)


def iterate_batches(data, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                    drop_last: bool = False, num_workers: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one epoch as dicts of NumPy arrays (the batch contract), in order. ``num_workers`` > 0
    builds them on that many threads (NumPy releases the GIL in its copies), still yielded in order."""
    ds = as_dataset(data)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an int >= 0")
    batches = epoch_batches(len(ds), batch_size, seed, epoch, shuffle, drop_last)
    if num_workers == 0:
        for idx in batches:
            yield ds.batch(idx, epoch)
        return
    # a bounded window of batches in flight (Executor.map would build the whole epoch ahead)
    window = 2 * num_workers
    with ThreadPoolExecutor(num_workers) as pool:
        pending = collections.deque()
        for idx in batches:
            pending.append(pool.submit(ds.batch, idx, epoch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
