"""Worker for tests/test_training_torch.py: 10 updates of a tiny BertForPreTraining under torchrun (or in
one plain process), losses and final canonical weights written by rank 0 to ``OUT.npz``.

``python -m torch.distributed.run --nproc-per-node N tests/data/torch_dist_worker.py OUT PARALLELISM [ACCUM]``
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from bert_common.testing import tiny_config
from bert_common.training import TrainingArguments
from bert_common.training.loop import batch_indices
from bert_common.training.synthetic import SyntheticPretrainingDataset
from bert_torch import BertForPreTraining
from bert_torch.training import Trainer, init_distributed

STEPS, BATCH = 10, 8


def main(out: str, parallelism: str, accumulation: int = 1) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    config = tiny_config()
    data = SyntheticPretrainingDataset(config.vocab_size, n=48, seq_len=16, seed=3)
    args = TrainingArguments(learning_rate=2e-3, max_steps=STEPS, batch_size=BATCH, warmup_steps=2, dropout=False,
                             devices=world, parallelism=parallelism, gradient_accumulation_steps=accumulation)
    trainer = Trainer(BertForPreTraining(config, seed=0), args)
    losses = []
    for step in range(STEPS):
        epoch, idx = batch_indices(step, len(data), BATCH, args.seed)
        losses.append(trainer.step(data.batch(idx, epoch)))
    state = trainer.get_state()
    if rank == 0:
        np.savez(out, losses=np.array(losses), **{f"param.{k}": v for k, v in state.params.items()},
                 **{f"exp_avg_sq.{k}": v for k, v in state.exp_avg_sq.items()})
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
