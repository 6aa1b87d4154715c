"""Pretraining data for BERT (NumPy only; no deep-learning framework is imported).

* ``google`` — Google's ``create_pretraining_data.py`` (google-research/bert eedf571) reproduced exactly:
  same instances, same order, from the same ``random.Random(seed)`` draws.
* ``shards`` — the on-disk dataset (safetensors shards + ``manifest.json``) and ``open_dataset``, whose
  ``batch(indices, epoch)`` yields the batch contract every backend trains on.
* ``masking`` — the deterministic dynamic masker (masks keyed by (seed, epoch, example index)).
* ``tfrecord`` — ``tf.train.Example`` TFRecord files in Google's layout, written without TensorFlow.
* ``packing`` — several sequences per row (position ids restarting at 0, sequence boundaries).
* ``pipeline`` — raw text -> files, what ``bertrio pretrain-data`` runs.

Guide: ``docs/pretraining-data.md``.
"""
from __future__ import annotations

from bert_common.pretraining.google import GoogleFlags, create_pretraining_arrays
from bert_common.pretraining.loader import iterate_batches
from bert_common.pretraining.masking import IGNORE_INDEX, DynamicMasker, MaskingConfig, example_rng
from bert_common.pretraining.packing import pack_batch
from bert_common.pretraining.pipeline import write_pretraining_data
from bert_common.pretraining.shards import (BATCH_KEYS, PretrainingDataset, epoch_batches, epoch_order,
                                            open_dataset, worker_batches)

__all__ = ["open_dataset", "PretrainingDataset", "write_pretraining_data", "GoogleFlags", "create_pretraining_arrays",
           "MaskingConfig", "DynamicMasker", "example_rng", "IGNORE_INDEX", "BATCH_KEYS", "epoch_batches",
           "epoch_order", "worker_batches", "pack_batch", "iterate_batches"]
