"""The training loop, once for every backend (framework-free: NumPy, JSON, tqdm).

``train(trainer, dataset, args, output_dir, ...)`` drives any ``bert_common.training.Trainer``:

- **Data order** is a function of (seed, step) only: update ``s`` of a run over ``n`` examples with global
  batch B uses epoch ``e = s // (n // B)`` and rows ``perm[i*B:(i+1)*B]`` of
  ``np.random.default_rng([seed, e]).permutation(n)``, ``i = s % (n // B)`` (the last partial batch of an
  epoch is dropped). A resumed run therefore needs only the step to see the same batches.
- **Logging**: one JSON object per line, ``{"step", "loss", "lr", "tokens_per_s", "epoch"}`` every
  ``args.log_every`` updates (``step`` counts updates done; ``lr`` is the rate that update used), plus
  ``{"step", "epoch", "eval": {...}}`` after each epoch when an ``evaluate`` callback is given. A tqdm bar
  on stderr shows loss and tokens/s (off when stderr is not a TTY or ``progress=False``).
- **Checkpoints**: ``checkpoint-{step:08d}`` every ``args.save_every`` updates and at the end (see
  ``state_io``); ``resume`` continues from the newest complete one, to the same result as a straight run.
- **Ranks**: ``trainer.rank`` (0 when absent) — every rank runs the loop (steps and state gathers are
  collectives); only rank 0 writes files and shows the bar.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from bert_common.config import BertConfig
from bert_common.training import TrainingArguments, TrainState, lr_at
from bert_common.training.state_io import Resumable, TrainStateError, find_resumable, save_train_state

LOG_FIELDS = ("step", "loss", "lr", "tokens_per_s")
# TrainingArguments fields whose change alters the run's result: a resume must keep them (the flag named
# in the error is the CLI's). Devices, accumulation, parallelism and I/O cadence may change.
RESULT_FIELDS = {"learning_rate": "--learning-rate", "max_steps": "--steps / --epochs", "batch_size": "--batch-size",
                 "warmup_steps": "--warmup-steps", "warmup_ratio": "--warmup-ratio",
                 "weight_decay": "--weight-decay", "adam_beta1": "--adam-beta1", "adam_beta2": "--adam-beta2",
                 "adam_epsilon": "--adam-epsilon", "max_grad_norm": "--max-grad-norm", "seed": "--seed",
                 "dtype": "--dtype", "dropout": "--no-dropout"}
# Config keys that describe the file, not the model: ignored when a resume compares configs.
CONFIG_NOISE = ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


class Dataset(Protocol):
    """What the loop reads: ``len(ds)``, ``ds.manifest`` (dict) and ``ds.batch(indices, epoch)``."""
    manifest: Mapping[str, Any]

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int], epoch: int = 0) -> dict[str, np.ndarray]: ...


# ---------------------------------------------------------------------------------------------- data order
def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    if n_examples < batch_size:
        raise ValueError(f"the data has {n_examples} examples, fewer than one batch (--batch-size {batch_size})")
    return n_examples // batch_size


def batch_indices(step: int, n_examples: int, batch_size: int, seed: int) -> tuple[int, np.ndarray]:
    """(epoch, row indices (B,) int64) of update ``step`` (0-based); see the module docstring."""
    epoch, i = divmod(step, steps_per_epoch(n_examples, batch_size))
    perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return epoch, perm[i * batch_size:(i + 1) * batch_size]


# ---------------------------------------------------------------------------------------------- checks
def check_resume(res: Resumable, config: BertConfig, args: TrainingArguments, config_source: str = "the config"
                 ) -> None:
    """Refuse to resume a checkpoint made with another model config or other result-changing arguments.

    Raises ValueError naming the checkpoint, the config file / flag and both values."""
    mine, theirs = config.to_dict(), res.config.to_dict()
    diff = sorted(k for k in set(mine) | set(theirs)
                  if k not in CONFIG_NOISE and mine.get(k) != theirs.get(k))
    if diff:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in diff[:5])
        raise ValueError(f"{config_source} does not fit the checkpoint {res.path} (checkpoint vs given: {shown})")
    saved = res.meta.get("args", {})
    for field, flag in RESULT_FIELDS.items():
        if field in saved and saved[field] != getattr(args, field):
            raise ValueError(f"{flag} gives {field}={getattr(args, field)!r} but {res.path} was trained with "
                             f"{saved[field]!r}; a resumed run must keep it (or start a new --output)")
    if res.state.step > args.max_steps:
        raise ValueError(f"{res.path} is at step {res.state.step}, past max_steps={args.max_steps}")


def prepare_resume(output_dir: str, config: BertConfig, args: TrainingArguments,
                   config_source: str = "the config") -> Resumable | None:
    """Find and check the checkpoint ``--resume`` continues from (None when ``output_dir`` has none)."""
    res = find_resumable(output_dir)
    if res is not None:
        check_resume(res, config, args, config_source)
    return res


# ---------------------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class TrainResult:
    losses: dict[int, float]        # update number (1-based) -> loss, for the updates this call ran
    final_state: TrainState | None  # state after the last update (gathered on every rank)
    checkpoints: list[str]          # directories written by this call (rank 0)
    evals: list[dict[str, Any]]     # per-epoch eval records
    resumed_from: str | None


def _progress(total: int, initial: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc="train", file=sys.stderr, dynamic_ncols=True)


def _rewrite_log(path: str, upto_step: int) -> None:
    """Keep only the log records of updates <= ``upto_step`` (a resumed run re-logs the rest)."""
    from bert_common.io_utils import atomic_write_text
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the crash
            if int(rec.get("step", 0)) <= upto_step:
                kept.append(json.dumps(rec) + "\n")
    atomic_write_text(path, "".join(kept))


def train(trainer, dataset: Dataset, args: TrainingArguments, output_dir: str | None, *, config: BertConfig,
          model_class: str, backend: str = "", log: str | None = None,
          resume: Resumable | bool | None = None, evaluate: Callable[[int], Mapping[str, Any]] | None = None,
          progress: bool = True, tokenizer_from: str | None = None, extra_state: Mapping[str, Any] | None = None,
          ) -> TrainResult:
    """Run updates ``[start, args.max_steps)`` of ``trainer`` over ``dataset`` (see the module docstring).

    ``output_dir``: where ``checkpoint-*`` go (None: no checkpoints); ``log``: JSON Lines path (appended;
    on resume, records past the checkpoint are dropped first); ``resume``: a ``Resumable`` from
    ``prepare_resume``, or True to look it up here; ``evaluate(epoch) -> metrics`` runs after each full
    epoch on every rank (rank 0 logs it); ``extra_state``: JSON-able data stored in trainer_state.json.
    """
    rank = int(getattr(trainer, "rank", 0))
    writer = rank == 0
    n = len(dataset)
    per_epoch = steps_per_epoch(n, args.batch_size)
    if resume is True:
        if output_dir is None:
            raise ValueError("resume needs an output directory")
        resume = prepare_resume(output_dir, config, args)
    start = 0
    if isinstance(resume, Resumable):
        trainer.set_state(resume.state)
        start = resume.state.step
        if writer:
            print(f"bertrio: {resume.message()}", file=sys.stderr)
            if log:
                _rewrite_log(log, start)
    if writer and log and os.path.dirname(os.path.abspath(log)):
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    log_file = open(log, "a", encoding="utf-8") if (writer and log) else None
    bar = _progress(args.max_steps, start, progress and writer)
    result = TrainResult({}, None, [], [], resume.path if isinstance(resume, Resumable) else None)

    def emit(record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def save(state: TrainState, epoch: int) -> None:
        if not (writer and output_dir):
            return
        meta = {"backend": backend, "args": args.to_dict(), "extra": dict(extra_state or {}),
                "data": {"seed": args.seed, "epoch": epoch, "examples": n, "steps_per_epoch": per_epoch,
                         "order": "np.random.default_rng([seed, epoch]).permutation(examples)"},
                "rng": {"dropout": "keyed by (seed, step, micro-batch, device); nothing to restore"}}
        result.checkpoints.append(save_train_state(output_dir, state, config, model_class=model_class,
                                                   trainer_state=meta, tokenizer_from=tokenizer_from,
                                                   overwrite=True))

    try:
        state = None
        for step in range(start, args.max_steps):
            epoch, idx = batch_indices(step, n, args.batch_size, args.seed)
            batch = dataset.batch(idx, epoch=epoch)
            t0 = time.perf_counter()
            loss = float(trainer.step(batch))
            seconds = max(time.perf_counter() - t0, 1e-9)
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss} at step {step + 1}; lower --learning-rate or check "
                                         f"the data")
            done = step + 1
            result.losses[done] = loss
            tokens = int(np.sum(batch["attention_mask"])) if "attention_mask" in batch else int(batch["input_ids"].size)
            if done % args.log_every == 0 or done == args.max_steps:
                emit({"step": done, "loss": loss, "lr": lr_at(step, args), "tokens_per_s": tokens / seconds,
                      "epoch": epoch})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / seconds:,.0f}")
                bar.update(1)
            last = done == args.max_steps
            if args.save_every and (done % args.save_every == 0 or last):
                state = trainer.get_state()
                save(state, epoch)
            if evaluate is not None and (done % per_epoch == 0 or last):
                metrics = dict(evaluate(epoch))
                record = {"step": done, "epoch": epoch, "eval": metrics}
                result.evals.append(record)
                emit(record)
                if writer:
                    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in metrics.items())
                    (bar.write if bar is not None else print)(f"epoch {epoch + 1}: {shown}")
        result.final_state = state if (state is not None and state.step == args.max_steps) else trainer.get_state()
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return result


__all__ = ["train", "TrainResult", "batch_indices", "steps_per_epoch", "prepare_resume", "check_resume",
           "RESULT_FIELDS", "LOG_FIELDS", "TrainStateError"]
