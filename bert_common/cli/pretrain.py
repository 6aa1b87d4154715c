"""``bertrio pretrain``: MLM + NSP pretraining in any backend, from the shards of ``bertrio pretrain-data``.

Everything is checked before the first step, and nothing is written when a check fails: the shards'
vocabulary (manifest size and hash) against ``--config``, the row length against the position table,
``--output`` (empty unless ``--resume``), the checkpoint ``--resume`` would use against ``--config`` and
the flags, the batch size against ``--devices`` x accumulation, ``--devices`` against what the framework
sees. ``--devices N`` with ``--backend torch`` re-executes this command under
``python -m torch.distributed.run --standalone --nproc-per-node N`` (torchrun); launching it yourself
(``torchrun --nproc-per-node N -m bert_common pretrain ... --devices N``) is the same.
"""
from __future__ import annotations

import argparse
import os

from bert_common.cli.base import EXIT_OK
from bert_common.training import PRETRAIN_DEFAULTS

HELP = "pretrain BERT (MLM + NSP) in torch, tf or flax from `bertrio pretrain-data` shards"
MODEL_CLASS = "BertForPreTraining"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bert_common.training.runner import add_training_arguments
    p.add_argument("--data", required=True, help="dataset directory written by `bertrio pretrain-data`")
    p.add_argument("--config", required=True, dest="config_path", metavar="CONFIG_JSON_OR_CHECKPOINT",
                   help="config.json for a fresh model, or a checkpoint directory to continue from its weights")
    p.add_argument("--steps", type=int, default=1000, help="optimizer updates (default 1000)")
    add_training_arguments(p, PRETRAIN_DEFAULTS["learning_rate"], 32)


def _arguments(args: argparse.Namespace, max_steps: int):
    from bert_common.training import TrainingArguments
    per_update = args.devices * args.gradient_accumulation_steps
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    if args.batch_size < 1 or args.batch_size % per_update:
        raise ValueError(f"--batch-size {args.batch_size} does not divide over --devices {args.devices} x "
                         f"--gradient-accumulation-steps {args.gradient_accumulation_steps} = {per_update}")
    return TrainingArguments(
        learning_rate=args.learning_rate, max_steps=max_steps, batch_size=args.batch_size,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
        gradient_accumulation_steps=args.gradient_accumulation_steps, seed=args.seed, dtype=args.dtype,
        devices=args.devices, parallelism=args.parallelism, dropout=not args.no_dropout,
        save_every=args.save_every, log_every=args.log_every)


def run(args: argparse.Namespace) -> int:
    from bert_common import backend as _backend
    from bert_common.training import loop, runner

    backend = runner.backend_name(args.backend or _backend.get_backend())
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    targs = _arguments(args, args.steps)
    runner.check_devices(backend, targs.devices)
    config, ckpt_dir = runner.load_config(args.config_path)
    dataset = runner.open_data(args.data)
    vocab = os.path.join(ckpt_dir, "vocab.txt") if ckpt_dir else None
    runner.check_data(dataset.manifest, config, args.data, args.config_path, vocab)
    runner.check_output(args.output, args.resume)
    loop.steps_per_epoch(len(dataset), targs.batch_size)
    resume = (loop.prepare_resume(args.output, config, targs, f"--config {args.config_path}")
              if args.resume else None)
    if runner.needs_launch(backend, targs.devices):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return runner.launch_processes(targs.devices, ["pretrain"] + runner.to_argv(parser, args))

    runner.prepare_devices(backend, targs.devices)
    models = runner.model_module(backend)
    cls = getattr(models, MODEL_CLASS)
    if ckpt_dir and runner.has_weights(ckpt_dir):
        model = cls.from_pretrained(ckpt_dir, allow_new_head=True)
    else:
        model = cls(config, seed=targs.seed)
    trainer = runner.trainer_module(backend).Trainer(model, targs)

    log = args.log or os.path.join(args.output, "log.jsonl")
    result = loop.train(trainer, dataset, targs, args.output, config=config, model_class=MODEL_CLASS,
                        backend=backend, log=log, resume=resume, progress=not args.quiet,
                        tokenizer_from=ckpt_dir, extra_state={"data": os.path.abspath(args.data)})
    if int(getattr(trainer, "rank", 0)) == 0:
        from bert_common.checkpoint import save_checkpoint
        save_checkpoint(args.output, config, result.final_state.params, tokenizer_from=ckpt_dir,
                        architectures=[MODEL_CLASS])
        last = result.losses[max(result.losses)] if result.losses else float("nan")
        print(f"pretrain: {targs.max_steps} steps ({backend}), final loss {last:.4f}; model in {args.output}")
    return EXIT_OK
