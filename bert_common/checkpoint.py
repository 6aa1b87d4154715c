"""Hugging Face-style checkpoint directories without any framework (sits on ``bert_common.formats``).

A directory holds ``config.json`` and weights in one of the formats registered in
``bert_common.formats`` (safetensors single or sharded by default). ``load_checkpoint`` returns the
config and a canonical ``{name: np.ndarray}`` state dict; ``save_checkpoint`` writes ``config.json``,
``model.safetensors`` (or shards plus ``model.safetensors.index.json``) and tokenizer files.

Readers never see a half-written directory: every save builds the complete new directory as a temp
sibling and publishes it in one atomic step (``io_utils.publish``: an exchange where the OS has one), and
a read pins the directory it starts on (an open descriptor, read through ``/proc/self/fd``), so config,
index and every shard come from the same version; if that version is replaced and removed mid-read the
read starts again on the new one. A concurrent reader gets the old checkpoint or the new, never a mix.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Mapping

import numpy as np

from bert_common import formats
from bert_common.config import CONFIG_NAME, BertConfig
from bert_common.formats import CheckpointError
from bert_common.formats import safetensors as st
from bert_common.formats.shards import parse_size
from bert_common.io_utils import atomic_directory, pinned_dir

SAFE_WEIGHTS = st.WEIGHTS_NAME
SAFE_INDEX = st.INDEX_NAME
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


# ---------------------------------------------------------------------------------------------- reading
def load_state_dict(path: str | os.PathLike, config: BertConfig | None = None) -> tuple[dict[str, np.ndarray], str]:
    """(canonical state dict, format name) from a directory or weight file in any registered format."""
    path = os.fspath(path)
    for attempt in pinned_dir(path):  # one version of the directory, even while it is replaced
        with attempt as p:
            state, fmt = formats.read_weights(p, config)
    return state, fmt


def load_checkpoint(path: str | os.PathLike) -> tuple[BertConfig, dict[str, np.ndarray], str]:
    """(config, canonical state dict, format name) from a checkpoint directory, config and weights
    from the same version of it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    for attempt in pinned_dir(path):  # config and weights from one version of the directory
        with attempt as p:
            config = BertConfig.from_pretrained(p)
            state, fmt = formats.read_weights(p, config)
    return config, state, fmt


# ---------------------------------------------------------------------------------------------- writing
def write_safetensors(directory: str, state: Mapping[str, np.ndarray], shard_size: str | int | None = None,
                      metadata: Mapping[str, str] | None = None, progress=None) -> list[str]:
    """Write ``model.safetensors`` (or shards + index) into an existing directory; returns file names."""
    return st.write(directory, None, state, shard_size=shard_size, progress=progress, metadata=metadata)


def copy_tokenizer_files(src: str | None, dst: str) -> list[str]:
    copied = []
    if src and os.path.isdir(src):
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
                copied.append(name)
    return copied


def _is_safetensors_weight(name: str) -> bool:
    return name in (SAFE_WEIGHTS, SAFE_INDEX) or (name.startswith("model-") and name.endswith(".safetensors"))


def _carry_over(old: str, new: str, skip: Callable[[str], bool]) -> None:
    """Hard-link (else copy) every entry of ``old`` not ``skip``-ped into ``new``: HF's ``save_pretrained``
    keeps the other files of the directory it writes into."""
    for name in os.listdir(old):
        if skip(name):
            continue
        src, dst = os.path.join(old, name), os.path.join(new, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)  # files are never modified in place, so sharing the inode is safe
    except OSError:
        shutil.copy2(src, dst)


def _write(path: str, config: BertConfig, state: Mapping[str, np.ndarray], shard_size, tokenizer_from,
           architectures) -> None:
    cfg = config
    if architectures is not None:
        cfg = BertConfig.from_dict(config.to_dict(), architectures=architectures)
    write_safetensors(path, state, shard_size)
    copy_tokenizer_files(tokenizer_from, path)
    cfg.save_pretrained(path)


def save_checkpoint(path: str | os.PathLike, config: BertConfig, state: Mapping[str, np.ndarray],
                    shard_size: str | int | None = None, tokenizer_from: str | None = None,
                    architectures: list[str] | None = None) -> str:
    """Write ``config.json`` + safetensors weights (+ tokenizer files) into ``path``, as HF's
    ``save_pretrained`` does: other files already in ``path`` are kept, the previous safetensors weights
    (single or sharded) are replaced. The new directory is built complete beside ``path`` and swapped in
    atomically, so a concurrent reader sees the old checkpoint or the new one, never a mix.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a directory")
    replaced = set(TOKENIZER_FILES if tokenizer_from else ()) | {CONFIG_NAME}
    with atomic_directory(path, overwrite=True) as tmp:
        if os.path.isdir(path):
            _carry_over(path, tmp, lambda n: n in replaced or _is_safetensors_weight(n))
        _write(tmp, config, state, shard_size, tokenizer_from, architectures)
    return path


def save_checkpoint_dir(path: str | os.PathLike, config: BertConfig, state: Mapping[str, np.ndarray],
                        overwrite: bool = False, **kwargs) -> str:
    """Like ``save_checkpoint`` but the directory holds only the new checkpoint: an existing ``path`` is
    refused unless ``overwrite``, then replaced whole (atomically)."""
    path = os.fspath(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        _write(tmp, config, state, kwargs.pop("shard_size", None), kwargs.pop("tokenizer_from", None),
               kwargs.pop("architectures", None))
        if kwargs:
            raise TypeError(f"save_checkpoint_dir() got unexpected arguments {sorted(kwargs)}")
    return path


__all__ = ["load_checkpoint", "load_state_dict", "save_checkpoint", "save_checkpoint_dir", "parse_size",
           "copy_tokenizer_files", "write_safetensors", "CheckpointError", "TOKENIZER_FILES"]
