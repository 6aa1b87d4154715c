"""One training step (forward + backward + AdamW) of BertForPreTraining: bert_torch's Trainer vs Hugging
Face's torch BertForPreTraining with torch.optim.AdamW, same weights and batch; TF and Flax Trainers beside.

    .venv/bin/python benchmarks/bench_training.py [--batch 8] [--seq 128] [--iters 5] [--backends torch,tf,flax]
                                                  [--dtype float32|bfloat16] [--device cpu|cuda] [--full-logits]

BERT-base shapes (12 layers, hidden 768, 12 heads, intermediate 3072), MLM labels on 15 % of the tokens,
NSP labels, dropout on (a real training step), gradient clipping at 1.0, no weight decay on biases and
LayerNorm in both, and in both the fused ``torch.optim.AdamW`` kernel (``transformers.Trainer``'s default
optimizer with torch >= 2.8, ``adamw_torch_fused``; ours uses it too). What differs is the model step:
Hugging Face computes the MLM logits at all B x S positions, our trainers (all three,
``bert_common.training.SPARSE_MLM``) only at the labelled ones: torch at exactly those n tokens, TF and Flax
at P slots per row (``with_mlm_positions``, a power of two for their compilers; P = 32 here).
``--full-logits`` turns that off in every backend, for the ablation. Ours and HF's run interleaved (ours, theirs, ours, ...) so machine load affects them
alike; the median of each and the ratio ours / HF are printed (goal <= 1.0). The TF and Flax steps
(``bert_tf.training.Trainer``, ``bert_flax.training.Trainer``, compiled) are timed after, on the same
batch, and reported against the same HF median. Not a test: the oracle is a benchmark-only dependency.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from bert_common.config import BertConfig
from bert_common.training import SPARSE_MLM, TrainingArguments, decays
from bert_common.weights import init_weights
from bench_torch import timed  # the same synced timer (scripts run from benchmarks/)


def make_batch(config: BertConfig, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, config.vocab_size, (batch, seq)).astype(np.int32)
    labels = np.where(rng.random((batch, seq)) < 0.15, ids, -100).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[-1, seq // 2:] = 0
    labels[mask == 0] = -100
    types = np.zeros((batch, seq), np.int32)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
            "next_sentence_label": rng.integers(0, 2, batch).astype(np.int32)}


def hf_step_fn(config, state, batch, args, device):
    from conformance.adapters import hf as hf_adapter  # transformers: benchmark-only
    model = hf_adapter.build("BertForPreTraining", config, state, attn_implementation="sdpa").to(device).train()
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if decays(n)], "weight_decay": args.weight_decay},
                             {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}],
                            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                            fused=True)  # transformers.Trainer's default (adamw_torch_fused) with torch >= 2.8
    tensors = {k: torch.from_numpy(v).long().to(device) for k, v in batch.items()}
    params = [p for _, p in named]

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = model(**tensors).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", default="torch,tf,flax")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full-logits", action="store_true", help="MLM logits at every position in our trainers too")
    a = p.parse_args()
    if a.full_logits:
        SPARSE_MLM.clear()  # the one table every backend's trainer reads
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    config = BertConfig()  # BERT-base defaults, dropout 0.1
    state = init_weights(config, "BertForPreTraining", seed=0)
    batch = make_batch(config, a.batch, a.seq)
    args = TrainingArguments(learning_rate=1e-4, max_steps=10_000, batch_size=a.batch, warmup_steps=0,
                             dtype=a.dtype)

    from bert_torch import BertForPreTraining
    from bert_torch.training import Trainer
    ours = Trainer(BertForPreTraining(config, seed=0), args)  # the same init_weights(seed=0) as ``state``
    theirs = hf_step_fn(config, state, batch, args, a.device)
    for _ in range(a.warmup):
        ours.step(batch)
        theirs()
    t_ours, t_hf = [], []
    for _ in range(a.iters):
        t_ours.append(timed(lambda: ours.step(batch), a.device))
        t_hf.append(timed(theirs, a.device))
    hf = statistics.median(t_hf)
    rows = [("bert_torch Trainer", statistics.median(t_ours)), ("HF torch BertForPreTraining + AdamW", hf)]

    for backend in [b for b in a.backends.split(",") if b in ("tf", "flax")]:
        import importlib
        models = importlib.import_module(f"bert_{backend}")
        training = importlib.import_module(f"bert_{backend}.training")
        trainer = training.Trainer(models.BertForPreTraining(config, seed=0), args)
        for _ in range(a.warmup):  # the first call compiles
            trainer.step(batch)
        rows.append((f"bert_{backend} Trainer", statistics.median(
            [timed(lambda: trainer.step(batch), "cpu") for _ in range(a.iters)])))

    print(f"training step, BertForPreTraining BERT-base, batch {a.batch} x seq {a.seq}, {a.dtype}, {a.device}, "
          f"median of {a.iters} (torch threads {torch.get_num_threads()})"
          f"{', full MLM logits in ours' if a.full_logits else ''}")
    for name, t in rows:
        print(f"  {name:<38} {t * 1000:9.1f} ms   {t / hf:5.2f}x HF")


if __name__ == "__main__":
    main()
