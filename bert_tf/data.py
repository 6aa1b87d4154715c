"""TensorFlow loading of pretraining data: a ``tf.data.Dataset`` of whole batches.

Batches come from ``bert_common.pretraining`` (NumPy): element k of the dataset is
``ds.batch(epoch_batches(...)[k], epoch)``, built by ``tf.numpy_function`` on ``num_parallel_calls``
threads with ``deterministic=True``, so the stream is the same for any parallelism — and the same as the
torch and JAX loaders give.
"""
from __future__ import annotations

import tensorflow as tf

from bert_common.pretraining.loader import as_dataset
from bert_common.pretraining.shards import BATCH_KEYS, epoch_batches


def make_tf_dataset(data, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                    drop_last: bool = False, num_parallel_calls: int = 1) -> tf.data.Dataset:
    """Dataset of dicts of int32 tensors (the batch contract: ``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``labels`` (B, S); ``next_sentence_label`` (B,)) for one epoch. ``data``: a path
    written by ``bertrio pretrain-data`` or a dataset object."""
    ds = as_dataset(data)
    if not isinstance(num_parallel_calls, int) or num_parallel_calls < 1:
        raise ValueError(f"num_parallel_calls={num_parallel_calls!r} must be an int >= 1")
    batches = epoch_batches(len(ds), batch_size, seed, epoch, shuffle, drop_last)
    seq = int(ds.manifest["max_seq_length"])

    def fetch(k):
        b = ds.batch(batches[int(k)], epoch)
        return tuple(b[key] for key in BATCH_KEYS)

    def to_dict(k):
        parts = tf.numpy_function(fetch, [k], [tf.int32] * len(BATCH_KEYS), stateful=False)
        out = {}
        for key, t in zip(BATCH_KEYS, parts):
            t.set_shape([None] if key == "next_sentence_label" else [None, seq])
            out[key] = t
        return out

    return tf.data.Dataset.range(len(batches)).map(to_dict, num_parallel_calls=num_parallel_calls,
                                                   deterministic=True)


__all__ = ["make_tf_dataset"]
