"""Weight file formats as a registry: how each is recognised in a directory, read and written.

Every reader returns canonical ``{name: np.ndarray}`` (Hugging Face PyTorch names and layouts) without
executing code from the file; every writer takes the same. ``read_weights`` picks the first format
whose files are present, in ``FORMATS`` order (safetensors first).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import numpy as np

from bert_common.config import BertConfig


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    files: tuple[str, ...]  # any of these in a directory means the format is present
    read: Callable[[str, BertConfig | None], dict[str, np.ndarray]]  # (dir or file, config) -> canonical
    write: Callable[..., list[str]] | None = None  # (dir, config, state, **opts) -> file names
    description: str = ""


def _read_safetensors(path: str, config: BertConfig | None) -> dict[str, np.ndarray]:
    from bert_common import checkpoint, safetensors_io
    if os.path.isdir(path):
        return checkpoint.read_safetensors_dir(path)
    if path.endswith(".index.json"):
        return checkpoint.read_sharded_index(path, safetensors_io.load_file)
    return safetensors_io.load_file(path)


def _write_safetensors(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], shard_size=None,
                       **_: object) -> list[str]:
    from bert_common import checkpoint
    return checkpoint.write_safetensors(directory, state, shard_size)


FORMATS: dict[str, Format] = {
    "safetensors": Format("safetensors", ("model.safetensors", "model.safetensors.index.json"),
                          _read_safetensors, _write_safetensors, "Hugging Face safetensors (default)"),
}


def register_format(fmt: Format) -> None:
    FORMATS[fmt.name] = fmt


def detect_formats(path: str) -> list[str]:
    """Names of every format with files present in directory ``path`` (or the one a file belongs to)."""
    if os.path.isdir(path):
        present = set(os.listdir(path))
        return [f.name for f in FORMATS.values() if present & set(f.files)]
    base = os.path.basename(path)
    for f in FORMATS.values():
        if base in f.files or any(base.endswith(x) for x in f.files) or any(
                os.path.exists(path + x) for x in f.files if x.startswith(".")):
            return [f.name]
    return []


def read_weights(path: str, config: BertConfig | None = None, fmt: str | None = None
                 ) -> tuple[dict[str, np.ndarray], str]:
    """(canonical state dict, format name). Raises FileNotFoundError naming ``path`` when no weights."""
    found = [fmt] if fmt else detect_formats(path)
    if fmt and fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {sorted(FORMATS)}")
    if not found:
        wanted = sorted({n for f in FORMATS.values() for n in f.files})
        raise FileNotFoundError(f"no weights found in {path} (looked for {', '.join(wanted)})")
    return FORMATS[found[0]].read(path, config), found[0]


def write_weights(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], fmt: str = "safetensors",
                  **opts) -> list[str]:
    if fmt not in FORMATS or FORMATS[fmt].write is None:
        writable = [n for n, f in FORMATS.items() if f.write is not None]
        raise ValueError(f"--to {fmt!r} is not one of {writable}")
    return FORMATS[fmt].write(directory, config, state, **opts)
