"""``bertrio finetune``: fine-tune a checkpoint on a JSON Lines task in any backend.

Tasks and file layouts: ``bert_common.training.finetune`` (sequence-classification: ``text`` /
``text_pair`` / ``label``; token-classification: ``tokens`` / ``tags``; question-answering: SQuAD-style
``question`` / ``context`` / ``answers``). The eval metric (accuracy + macro F1, entity F1, exact match +
F1) is printed and logged after every epoch; the final model is written to ``--output`` as canonical
safetensors (+ tokenizer files), loadable by every backend. Bad rows and labels stop the run before the
first step, naming the file and line; nothing is written.
"""
from __future__ import annotations

import argparse
import os

from bert_common.cli.base import EXIT_OK, default_checkpoint
from bert_common.training import FINETUNE_DEFAULTS

HELP = "fine-tune a checkpoint (sequence / token classification, question answering) in torch, tf or flax"
TASK_NAMES = ("sequence-classification", "token-classification", "question-answering")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bert_common.training.runner import add_training_arguments
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--train", required=True, help="training examples, JSON Lines")
    p.add_argument("--eval", default=None, help="evaluation examples, JSON Lines (metric after each epoch)")
    p.add_argument("--checkpoint", default=None, help="checkpoint to start from (default: the embedded MiniLM)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-labels", type=int, default=None,
                   help="classes (default: the checkpoint's named labels, else the labels of --train)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per row (question answering: per window)")
    p.add_argument("--stride", type=int, default=32, help="question answering: overlap of context windows")
    add_training_arguments(p, FINETUNE_DEFAULTS["learning_rate"], FINETUNE_DEFAULTS["batch_size"])


def _labels(config, args, rows_label2id):
    """(num_labels, label2id or None): named labels of the checkpoint win, then those of --train."""
    from bert_common.training.finetune import _has_named_labels
    label2id = dict(config.label2id) if _has_named_labels(config.label2id) else rows_label2id
    n = args.num_labels or (len(label2id) if label2id else None)
    if label2id and args.num_labels and args.num_labels < len(label2id):
        raise ValueError(f"--num-labels {args.num_labels} is fewer than the {len(label2id)} labels "
                         f"{sorted(label2id)[:10]} of {'the checkpoint' if rows_label2id is not label2id else args.train}")
    return n, label2id


def run(args: argparse.Namespace) -> int:
    from bert_common import backend as _backend
    from bert_common.cli.pretrain import _arguments
    from bert_common.config import BertConfig
    from bert_common.tokenizers.fast import BertTokenizerFast
    from bert_common.training import finetune as ft
    from bert_common.training import loop, runner

    backend = runner.backend_name(args.backend or _backend.get_backend())
    task = ft.TASKS[args.task]
    ckpt = args.checkpoint or default_checkpoint()
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    config = BertConfig.from_pretrained(ckpt)
    if not os.path.isfile(os.path.join(ckpt, "vocab.txt")):
        raise FileNotFoundError(f"--checkpoint {ckpt} has no vocab.txt: fine-tuning needs its tokenizer")
    tokenizer = BertTokenizerFast.from_pretrained(ckpt)
    opts = {"max_length": args.max_length}
    if args.task == "question-answering":
        opts["stride"] = args.stride
        num_labels, label2id = 2, None
        if args.num_labels not in (None, 2):
            raise ValueError(f"--num-labels {args.num_labels}: question answering has 2 outputs (start, end)")
    else:
        named = dict(config.label2id) if ft._has_named_labels(config.label2id) else None
        n_from_ints = None
        if named is None:  # labels come from the training file; read it once to learn them
            rows = ft.read_jsonl(args.train, ("label",) if args.task == "sequence-classification" else ("tags",))
            values = ([r["label"] for _, r in rows] if args.task == "sequence-classification"
                      else [t for _, r in rows for t in r["tags"]])
            named = ft.build_label2id(values, args.train)
            n_from_ints = None if named else max(int(v) for v in values) + 1
        num_labels, label2id = _labels(config, args, named)
        num_labels = num_labels or n_from_ints
        opts.update(num_labels=num_labels, label2id=label2id)
    train_set = task.load(args.train, tokenizer, **opts)
    if args.task != "question-answering":  # eval labels go through the training file's mapping, never their own
        opts["label2id"] = train_set.meta["label2id"] or {}
    eval_set = task.load(args.eval, tokenizer, **opts) if args.eval else None
    targs = _arguments(args, args.epochs * loop.steps_per_epoch(len(train_set), args.batch_size))
    runner.check_output(args.output, args.resume)
    overrides = {"num_labels": num_labels}
    if label2id:
        overrides.update(label2id=dict(label2id), id2label={i: n for n, i in label2id.items()})
    config = BertConfig.from_dict(config.to_dict(), **overrides)
    resume = (loop.prepare_resume(args.output, config, targs, f"--checkpoint {ckpt}") if args.resume else None)
    runner.check_devices(backend, targs.devices)
    if runner.needs_launch(backend, targs.devices):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return runner.launch_processes(targs.devices, ["finetune"] + runner.to_argv(parser, args))

    runner.prepare_devices(backend, targs.devices)
    cls = getattr(runner.model_module(backend), task.model_class)
    model = cls.from_pretrained(ckpt, config=config, allow_new_head=True)
    trainer = runner.trainer_module(backend).Trainer(model, targs)
    id2label = {i: n for n, i in label2id.items()} if label2id else None

    def evaluate(epoch: int) -> dict:
        predict = runner.predictor(getattr(trainer, "model", model), task.output_keys)
        return ft.evaluate(eval_set, predict, id2label=id2label)

    log = args.log or os.path.join(args.output, "log.jsonl")
    result = loop.train(trainer, train_set, targs, args.output, config=config, model_class=task.model_class,
                        backend=backend, log=log, resume=resume, progress=not args.quiet,
                        evaluate=evaluate if eval_set is not None else None, tokenizer_from=ckpt,
                        extra_state={"task": args.task, "train": os.path.abspath(args.train)})
    if int(getattr(trainer, "rank", 0)) == 0:
        from bert_common.checkpoint import save_checkpoint
        save_checkpoint(args.output, config, result.final_state.params, tokenizer_from=ckpt,
                        architectures=[task.model_class])
        metric = (f", eval {task.main_metric} {result.evals[-1]['eval'][task.main_metric]:.4f}"
                  if result.evals else "")
        print(f"finetune: {args.task}, {targs.max_steps} steps ({backend}){metric}; model in {args.output}")
    return EXIT_OK
