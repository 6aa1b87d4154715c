"""``bertrio convert SRC DST``: read weights in any registered format, write them in another.

Order of work, chosen so that bad input never leaves anything behind:

1. check the arguments (format, dtype, shard size, DST not existing unless ``--overwrite``);
2. find the config (``--config``, else ``config.json`` / ``bert_config.json`` beside SRC);
3. read every tensor (each reader validates its file: truncation, checksums, unsafe pickles) and check
   the tensors fit the config (one head class exactly, shapes included);
4. cast (``--dtype``), then write weights + ``config.json`` + tokenizer files into a temporary sibling
   of DST that is renamed into place only when complete (``io_utils.atomic_directory``).

The command line around it is ``bert_common.cli.convert``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from bert_common import formats
from bert_common.checkpoint import copy_tokenizer_files
from bert_common.config import BertConfig
from bert_common.formats.base import bfloat16, find_config
from bert_common.formats.shards import parse_size
from bert_common.io_utils import atomic_directory, is_empty_dir, pinned_dir
from bert_common.weights import IGNORED_BUFFERS, head_spec

# --dtype name -> a function returning the NumPy dtype (the bfloat16 one imports ml_dtypes, ~1.3 s, when called).
DTYPES = {"float32": lambda: np.dtype(np.float32), "float16": lambda: np.dtype(np.float16), "bfloat16": bfloat16}
FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")  # what --dtype casts; integer buffers are kept
PROGRESS_MIN_BYTES = 64 * 2**20  # show a progress bar only for checkpoints at least this large


@dataclasses.dataclass
class ConvertSummary:
    """What one conversion did. ``bytes`` is the size of the weight files written."""
    src_format: str
    dst_format: str
    dst: str
    tensors: int
    parameters: int
    bytes: int
    seconds: float
    files: list[str]
    model_class: str | None

    def line(self) -> str:
        return (f"converted {self.src_format} -> {self.dst_format}: {self.tensors} tensors, "
                f"{self.parameters:,} parameters, {self.bytes:,} bytes in {self.seconds:.2f} s -> {self.dst}")


def _src_dir(src: str) -> str:
    return src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))


def _cast(arr: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None or arr.dtype.name not in FLOAT_NAMES or arr.dtype == dtype:
        return arr
    return arr.astype(dtype)


class _Bar:
    """A tqdm byte bar for checkpoints of at least PROGRESS_MIN_BYTES, else nothing."""

    def __init__(self, total: int, show: bool, desc: str):
        self.bar = None
        if show and total >= PROGRESS_MIN_BYTES:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)

    def __call__(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cast_all(state: dict[str, np.ndarray], dtype: np.dtype | None, show: bool) -> dict[str, np.ndarray]:
    """Cast floating tensors to ``dtype`` one at a time, popping each from ``state`` so its source
    can be freed (in-memory readers): the peak is one checkpoint plus one tensor, not two checkpoints."""
    if dtype is None:
        return state
    bar = _Bar(int(sum(np.asarray(a).nbytes for a in state.values())), show, f"casting to {dtype.name}")
    out = {}
    for name in list(state):
        arr = np.asarray(state.pop(name))
        out[name] = _cast(arr, dtype)
        bar(arr.nbytes)
    bar.close()
    return out


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str = "safetensors",
                       config: str | os.PathLike | BertConfig | None = None, dtype: str | None = None,
                       shard_size: str | int | None = None, model_class: str | None = None,
                       overwrite: bool = False, progress: bool = False) -> ConvertSummary:
    """Convert checkpoint ``src`` (directory, weight file or TF checkpoint prefix) into directory ``dst``.

    Raises ValueError / FileNotFoundError / FileExistsError / ImportError on bad input, before anything
    is written. Tensors keep their dtype (float32, bfloat16, ...) unless ``dtype`` is given.
    """
    start = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    if to not in formats.writable():
        raise ValueError(f"--to {to!r} is not one of {formats.writable()}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {list(DTYPES)}")
    if shard_size is not None:
        if to not in formats.shardable():
            raise ValueError(f"--shard-size {shard_size!r} applies to {formats.shardable()} only, not --to {to}")
        parse_size(shard_size)  # ValueError naming the bad size
    if model_class is not None:
        head_spec(model_class)  # ValueError naming the class and the valid ones
    if not os.path.exists(src) and not os.path.exists(src + ".index"):
        raise FileNotFoundError(f"SRC {src!r} does not exist")
    if os.path.exists(dst) and not overwrite and not is_empty_dir(dst):
        raise FileExistsError(f"DST {dst!r} exists and is not empty; pass --overwrite to replace it")
    if os.path.abspath(dst) == os.path.abspath(_src_dir(src)) or os.path.abspath(dst) == os.path.abspath(src):
        raise ValueError(f"DST {dst!r} is the source directory; write to a new directory")

    for attempt in pinned_dir(src):  # config and weights from one version of SRC
        with attempt as path:
            cfg = find_config(path, config)
            state, src_format = formats.read_weights(path, cfg, model_class=model_class)
    if cfg is None:  # an output without config.json is not a checkpoint any loader (or `bertrio info`) accepts
        raise ValueError(f"SRC {src!r} has no config.json or bert_config.json beside its weights; pass --config "
                         f"CONFIG_JSON so that the output is a loadable checkpoint")
    cls, _ = formats.plan_scheme(state, "torch", cfg, model_class)  # weights must fit the config: checked before writing
    state = _cast_all(state, DTYPES[dtype]() if dtype else None, progress)
    weights = [n for n in state if n.removeprefix("bert.") not in IGNORED_BUFFERS]  # as `bertrio info` counts
    n_params = int(sum(state[n].size for n in weights))

    total = int(sum(a.nbytes for a in state.values()))
    bar = _Bar(total, progress, f"writing {to}")  # every writer reports each file (or chunk) it finishes
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        files = formats.write_weights(tmp, cfg, state, to, shard_size=shard_size, progress=bar,
                                      model_class=model_class)
        bar.close()
        written = int(sum(os.path.getsize(os.path.join(tmp, f)) for f in files))
        out_cfg = cfg
        if not cfg.to_dict().get("architectures"):
            out_cfg = BertConfig.from_dict(cfg.to_dict(), architectures=[cls])
        if dtype is not None:
            out_cfg = BertConfig.from_dict(out_cfg.to_dict(), torch_dtype=dtype)
        out_cfg.save_pretrained(tmp)
        files.append("config.json")
        files += copy_tokenizer_files(_src_dir(src), tmp)
    return ConvertSummary(src_format, to, os.path.abspath(dst), len(weights), n_params, written,
                          time.perf_counter() - start, files, cls)


__all__ = ["convert_checkpoint", "ConvertSummary", "find_config", "parse_size"]
