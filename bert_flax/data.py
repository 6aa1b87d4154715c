"""JAX loading of pretraining data: a plain iterator of batches.

Batches come from ``bert_common.pretraining`` (NumPy) in the order of ``epoch_batches``; with
``num_workers`` > 0 they are built on threads and still yielded in order, so the stream is the same for
any worker count — and the same as the torch and TensorFlow loaders give.
"""
from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp

from bert_common.pretraining.loader import iterate_batches


def batch_iterator(data, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                   drop_last: bool = False, num_workers: int = 0, device=None) -> Iterator[dict[str, jax.Array]]:
    """Dicts of int32 ``jax.Array`` s (the batch contract: ``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``labels`` (B, S); ``next_sentence_label`` (B,)) for one epoch, put on ``device``
    (default: JAX's default device). ``data``: a path written by ``bertrio pretrain-data`` or a dataset."""
    for batch in iterate_batches(data, batch_size, seed, epoch, shuffle, drop_last, num_workers):
        if device is None:
            yield {k: jnp.asarray(v) for k, v in batch.items()}
        else:
            yield {k: jax.device_put(v, device) for k, v in batch.items()}


__all__ = ["batch_iterator"]
