"""Train-state checkpoints on disk (framework-free): write whole, read with checks, find the last good one.

Layout (see ``bert_common.training``): ``checkpoint-{step:08d}/`` holds ``config.json`` +
``model.safetensors`` (canonical weights, loadable by every backend and by Hugging Face),
``optimizer.safetensors`` (``exp_avg.{name}`` / ``exp_avg_sq.{name}``, fp32, canonical names) and
``trainer_state.json``. The directory is built in a temp sibling and renamed into place, so a crash
mid-save never leaves a partial ``checkpoint-*``; a checkpoint damaged later (a truncated file, a
missing one) is detected on reading and skipped by ``find_resumable``, which names it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from bert_common.checkpoint import copy_tokenizer_files, write_safetensors
from bert_common.config import BertConfig
from bert_common.formats.safetensors import load_file, save_file
from bert_common.io_utils import atomic_directory
from bert_common.training import CHECKPOINT_PREFIX, MOMENT_PREFIXES, TrainState

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
FORMAT_VERSION = 1
_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d{8})$")


class TrainStateError(ValueError):
    """A train-state checkpoint that cannot be used (message names the directory and the file)."""


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def save_train_state(output_dir: str | os.PathLike, state: TrainState, config: BertConfig, *, model_class: str,
                     trainer_state: Mapping[str, Any], tokenizer_from: str | None = None,
                     overwrite: bool = False) -> str:
    """Write ``output_dir/checkpoint-{state.step:08d}`` whole (temp dir + rename); returns its path.

    ``trainer_state``: JSON-able extras (backend, args, data position); ``step``, ``model_class`` and
    ``format_version`` are added here.
    """
    path = os.path.join(os.fspath(output_dir), checkpoint_name(state.step))
    moments = {}
    for prefix, store in zip(MOMENT_PREFIXES, (state.exp_avg, state.exp_avg_sq)):
        for name in state.params:
            moments[f"{prefix}.{name}"] = np.asarray(store[name], dtype=np.float32)
    cfg = BertConfig.from_dict(config.to_dict(), architectures=[model_class])
    meta = {"step": int(state.step), "model_class": model_class, "format_version": FORMAT_VERSION,
            **dict(trainer_state)}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        write_safetensors(tmp, {n: np.asarray(a, dtype=np.float32) for n, a in state.params.items()})
        save_file(moments, os.path.join(tmp, OPTIMIZER_FILE), {"format": "pt", "step": str(int(state.step))})
        copy_tokenizer_files(tokenizer_from, tmp)
        cfg.save_pretrained(tmp)
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:  # last: marks the set complete
            json.dump(meta, f, indent=2, sort_keys=True)
            f.write("\n")
    return path


def load_train_state(path: str | os.PathLike) -> tuple[BertConfig, TrainState, dict[str, Any]]:
    """(config, TrainState, trainer_state dict) from a checkpoint directory, checked whole.

    Raises ``TrainStateError`` naming the directory and the bad or missing file."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise TrainStateError(f"{path}: not a train-state checkpoint directory")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise TrainStateError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainStateError(f"{os.path.join(path, STATE_FILE)}: unreadable trainer state ({e})") from None
    try:
        config = BertConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise TrainStateError(f"{os.path.join(path, CONFIG_FILE)}: unreadable config ({e})") from None
    files = {}
    for file in (MODEL_FILE, OPTIMIZER_FILE):
        try:
            files[file] = {k: np.array(v, dtype=np.float32) for k, v in load_file(os.path.join(path, file),
                                                                                  mmap_=False).items()}
        except (OSError, ValueError) as e:
            raise TrainStateError(f"{os.path.join(path, file)}: unreadable ({e})") from None
    params, opt = files[MODEL_FILE], files[OPTIMIZER_FILE]
    moments = []
    for prefix in MOMENT_PREFIXES:
        store = {}
        for name, arr in params.items():
            key = f"{prefix}.{name}"
            if key not in opt:
                raise TrainStateError(f"{os.path.join(path, OPTIMIZER_FILE)}: no {key} for parameter {name}")
            if opt[key].shape != arr.shape:
                raise TrainStateError(f"{os.path.join(path, OPTIMIZER_FILE)}: {key} has shape {opt[key].shape}, "
                                      f"the parameter {arr.shape}")
            store[name] = opt[key]
        moments.append(store)
    m = _NAME.search(os.path.basename(os.path.normpath(path)))
    if m and int(m.group(1)) != step:
        raise TrainStateError(f"{os.path.join(path, STATE_FILE)}: says step {step}, the directory name "
                              f"{int(m.group(1))}")
    return config, TrainState(params=params, exp_avg=moments[0], exp_avg_sq=moments[1], step=step), meta


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``[(step, path)]`` of every ``checkpoint-NNNNNNNN`` directory in ``output_dir``, newest first
    (temp siblings of an interrupted save are not listed)."""
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, n)) for n in os.listdir(output_dir)
             if (m := _NAME.fullmatch(n)) and os.path.isdir(os.path.join(output_dir, n))]
    return sorted(found, reverse=True)


@dataclasses.dataclass
class Resumable:
    """The checkpoint ``--resume`` continues from, and the newer ones it had to skip (path, reason)."""
    path: str
    config: BertConfig
    state: TrainState
    meta: dict[str, Any]
    skipped: list[tuple[str, str]]

    def message(self) -> str:
        """One line for the user: which checkpoint is used and which (newer) ones were not."""
        text = f"resuming from {self.path} (step {self.state.step})"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{p}: {why}" for p, why in self.skipped)
        return text


def find_resumable(output_dir: str | os.PathLike) -> Resumable | None:
    """The newest checkpoint in ``output_dir`` that reads back whole; None when there is none at all.

    Raises ``TrainStateError`` when checkpoints exist but none is usable (naming each and why)."""
    skipped: list[tuple[str, str]] = []
    for _, path in list_checkpoints(output_dir):
        try:
            config, state, meta = load_train_state(path)
        except TrainStateError as e:
            skipped.append((path, str(e).removeprefix(path + ": ")))
            continue
        return Resumable(path, config, state, meta, skipped)
    if skipped:
        raise TrainStateError(f"no usable checkpoint in {os.fspath(output_dir)}: " +
                              "; ".join(f"{p}: {why}" for p, why in skipped))
    return None


__all__ = ["save_train_state", "load_train_state", "list_checkpoints", "find_resumable", "Resumable",
           "TrainStateError", "checkpoint_name", "OPTIMIZER_FILE", "STATE_FILE", "REQUIRED_FILES"]
