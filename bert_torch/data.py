"""PyTorch loading of pretraining data: an ``IterableDataset`` of whole batches, sharded over workers.

Batches come from ``bert_common.pretraining`` (NumPy): batch k of an epoch is
``ds.batch(epoch_batches(...)[k], epoch)``. Worker w of W yields batches w, w + W, ... and torch's
``DataLoader`` reads its workers round-robin, so the stream is the same for any ``num_workers`` — and the
same as the TensorFlow and JAX loaders give.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bert_common.pretraining.loader import as_dataset
from bert_common.pretraining.shards import epoch_batches, worker_batches


class PretrainingIterableDataset(IterableDataset):
    """Yields dicts of int32 tensors (the batch contract: ``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``labels`` (B, S); ``next_sentence_label`` (B,)). ``data``: a path written by
    ``bertrio pretrain-data`` or a dataset object; ``set_epoch(e)`` before each epoch."""

    def __init__(self, data, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        super().__init__()
        self.ds = as_dataset(data)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.shuffle, self.drop_last = shuffle, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(epoch_batches(len(self.ds), self.batch_size, self.seed, self.epoch, self.shuffle, self.drop_last))

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        batches = epoch_batches(len(self.ds), self.batch_size, self.seed, self.epoch, self.shuffle, self.drop_last)
        for idx in worker_batches(batches, wid, nw):
            yield {k: torch.from_numpy(v) for k, v in self.ds.batch(idx, self.epoch).items()}


def make_dataloader(data, batch_size: int, num_workers: int = 0, seed: int = 0, epoch: int = 0,
                    shuffle: bool = True, drop_last: bool = False, **loader_kwargs) -> DataLoader:
    """A ``DataLoader`` over ``PretrainingIterableDataset`` (``batch_size=None``: the dataset batches)."""
    ds = PretrainingIterableDataset(data, batch_size, seed, epoch, shuffle, drop_last)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, **loader_kwargs)


__all__ = ["PretrainingIterableDataset", "make_dataloader"]
