"""What every weight format shares: the error type, caps, the dtype and shape checks that run before a
reader trusts a file, scheme matching, the config finder and the atomic writer.

Layering: ``bert_common.formats.base`` <- ``formats.shards`` <- one module per format <- the registry
``bert_common.formats`` <- ``bert_common.checkpoint`` <- ``bert_common.convert``. Nothing here imports
upward.

Validation contract for every reader (``docs/convert.md``):

- dtypes: weights must be floating (``WEIGHT_DTYPES``); integer dtypes only for the known buffers
  (``IGNORED_BUFFERS``: ``position_ids``, ``token_type_ids``); anything else is refused naming the file,
  the tensor and the dtype;
- shapes: when the config is known, each tensor's declared shape is compared with what the config allows
  (``expected_shapes``) *before* its data is read;
- sizes: declared byte counts are computed with Python integers (no overflow) and bounded by the file
  size; tensor counts by ``MAX_TENSORS``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Callable, Iterable, Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.io_utils import atomic_directory, atomic_file, atomic_path, atomic_write_text
from bert_common.weights import (HEADS, IGNORED_BUFFERS, WeightMappingError, canonical_shapes, from_scheme,
                                 head_spec, scheme_path, tied_aliases)

# ---------------------------------------------------------------------------------------------- caps
MAX_TENSORS = 16384           # tensors in one file or index (BERT-large with every head: < 450)
MAX_HEADER_BYTES = 4 * 2**20  # safetensors JSON header / shard index size (BERT-large: ~60 KB)
MAX_TREE_DEPTH = 32           # nesting of a msgpack parameter tree or an h5 path
MAX_NAME_BYTES = 1024         # one tensor name

# Floating dtypes a weight may have (NumPy names); integer dtypes a buffer may have.
WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")
BUFFER_DTYPES = ("int64", "int32")


@functools.cache
def bfloat16() -> np.dtype:
    """NumPy's bfloat16 dtype (2 bytes; NumPy has none of its own, ml_dtypes provides it).

    Imported here, on the first bf16 tensor read, written or cast: importing ml_dtypes takes ~1.3 s (more
    than all of ``bert_common``), and PyTorch does not import it, so ``import bert_torch`` must not either.
    A bf16 array cannot exist before ml_dtypes (or JAX / TensorFlow, which import it) is loaded, so code
    that only *inspects* dtypes compares ``dtype.name == "bfloat16"`` instead of calling this."""
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - ml_dtypes is a declared dependency
        raise ImportError(f"bfloat16 tensors need the ml_dtypes package ({e})") from e
    return np.dtype(ml_dtypes.bfloat16)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, inconsistent, hostile or otherwise unreadable.

    The message names the file and, where one is at fault, the tensor or field."""


def is_buffer(name: str) -> bool:
    """Canonical buffers (``[bert.]embeddings.position_ids`` ...): integer, not weights."""
    return name.removeprefix("bert.") in IGNORED_BUFFERS or name.split("/")[-1] in ("position_ids",
                                                                                    "token_type_ids")


def check_dtype(file: str, name: str, dtype_name: str, allowed: Mapping[str, str] | Iterable[str],
                fmt: str) -> str:
    """The NumPy dtype name for format dtype ``dtype_name`` of tensor ``name``, or CheckpointError.

    ``allowed`` maps the format's own dtype spelling to a NumPy name (or lists NumPy names)."""
    table = allowed if isinstance(allowed, Mapping) else {a: a for a in allowed}
    np_name = table.get(dtype_name)
    ok = WEIGHT_DTYPES + (BUFFER_DTYPES if is_buffer(name) else ())
    if np_name is None or np_name not in ok:
        names = sorted(k for k, v in table.items() if v in WEIGHT_DTYPES)
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {dtype_name!r}; {fmt} weights must be one of "
                              f"{names}" + (" (integer only for the position_ids / token_type_ids buffers)"
                                            if any(v in BUFFER_DTYPES for v in table.values()) else ""))
    return np_name


def nbytes(file: str, name: str, shape, itemsize: int) -> int:
    """Byte count of ``shape`` x ``itemsize`` in exact integers; CheckpointError for a bad shape."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 8 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{file}: tensor {name!r} has an invalid shape {shape!r}")
    n = itemsize
    for d in shape:
        n *= d
    return n


def count_cap(file: str, n: int) -> None:
    if n > MAX_TENSORS:
        raise CheckpointError(f"{file}: holds {n} tensors, over the cap of {MAX_TENSORS} (MAX_TENSORS)")


# ---------------------------------------------------------------------------------------------- shapes
def expected_shapes(config: BertConfig, scheme: str | None = None) -> dict[str, set[tuple[int, ...]]]:
    """``{name: allowed shapes}`` over every head class (with and without pooler) for ``config``.

    Names are canonical (``scheme=None``) or the scheme's paths, with shapes as the scheme stores them
    (transposed where it transposes). Includes tied aliases and the integer buffers.
    """
    out: dict[str, set[tuple[int, ...]]] = {}

    def add(name: str, shape) -> None:
        if scheme is not None:
            path, t = scheme_path(name, scheme)
            name, shape = path, tuple(shape)[::-1] if t else tuple(shape)
        out.setdefault(name, set()).add(tuple(shape))

    for cls in HEADS:
        for pooler in (True, False):
            shapes = canonical_shapes(config, cls, pooler)
            for n, s in shapes.items():
                add(n, s)
            if scheme is None:
                for alias, src in tied_aliases(config, cls).items():
                    if src in shapes:
                        add(alias, shapes[src])
    if scheme is None:
        for prefix in ("", "bert."):
            for b in IGNORED_BUFFERS:
                add(prefix + b, (1, config.max_position_embeddings))
    return out


# Canonical names whose shape depends on num_labels, which a caller may override at load time
# (from_pretrained(num_labels=5) on a 3-label checkpoint): only their rank and hidden size are fixed here.
_LABEL_DEPENDENT = ("classifier.weight", "classifier.bias", "qa_outputs.weight", "qa_outputs.bias")


def check_shape(file: str, name: str, shape: tuple, expected: Mapping[str, set] | None,
                strict_names: bool = False) -> None:
    """CheckpointError when ``shape`` is not one the config allows for ``name``.

    ``strict_names``: refuse names the config has no place for (formats matched by scheme). Otherwise an
    unknown name is allowed (HF checkpoints carry extras, reported later as unexpected)."""
    if expected is None:
        return
    allowed = expected.get(name)
    if allowed is None:
        if strict_names:
            raise CheckpointError(f"{file}: tensor {name!r} has no place in any BERT class for this config")
        return
    shape = tuple(shape)
    if shape in allowed:
        return
    if name in _LABEL_DEPENDENT and any(len(a) == len(shape) and a[1:] == shape[1:] for a in allowed) \
            and shape[0] <= 2**20:
        return
    raise CheckpointError(f"{file}: tensor {name!r} has shape {shape}, but the config allows "
                          f"{' or '.join(str(a) for a in sorted(allowed))}")


# ---------------------------------------------------------------------------------------------- config
CONFIG_FILES = ("config.json", "bert_config.json")


def find_config(path: str, config: str | os.PathLike | BertConfig | None = None) -> BertConfig | None:
    """The one config finder: ``config`` itself (a BertConfig or a json path), else ``config.json`` /
    ``bert_config.json`` beside ``path`` (a directory, a weight file or a TF checkpoint prefix); None when
    there is none."""
    if isinstance(config, BertConfig):
        return config
    if config is not None:
        file = os.fspath(config)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"--config {file!r}: no such file")
        return BertConfig.from_json_file(file)
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in CONFIG_FILES:
        file = os.path.join(directory, name)
        if os.path.isfile(file):
            return BertConfig.from_json_file(file)
    return None


def require_config(path: str, config: BertConfig | None) -> BertConfig:
    """``find_config`` or ValueError saying why a config is needed."""
    found = find_config(path, config)
    if found is None:
        raise ValueError(f"reading {path} needs the model config (its tensor names depend on the layer count "
                         f"and head): no config.json or bert_config.json beside it; pass --config")
    return found


# ---------------------------------------------------------------------------------------------- schemes
def _candidates(model_class: str | None, config: BertConfig | None = None) -> list[tuple[str, bool]]:
    """(class, add_pooling_layer) pairs to try: the class default first, then the other pooler choice.

    Classes with the same tensor names (masked LM / causal LM; the classifier heads) map identically;
    the order only picks the name written where a format records the class (the h5 model scope):
    the config's ``architectures`` first, then the causal LM for decoder configs.
    """
    if model_class:
        head_spec(model_class)  # ValueError naming the bad class
        classes = [model_class]
    else:
        preferred = [a for a in (config.extra.get("architectures") or []) if a in HEADS] if config else []
        rest = list(HEADS)
        if config is not None and not config.is_decoder:  # an encoder's LM head is the masked one
            rest.remove("BertForMaskedLM")
            rest.insert(rest.index("BertLMHeadModel"), "BertForMaskedLM")
        classes = preferred + [c for c in rest if c not in preferred]
    return [(c, p) for c in classes for p in (HEADS[c].pooler, not HEADS[c].pooler)]


def transposed(arr: np.ndarray, transpose: bool) -> np.ndarray:
    """C-contiguous ``arr`` or its transpose (a copy only when needed)."""
    return np.ascontiguousarray(np.asarray(arr).T if transpose else arr)


def match_scheme(tensors: dict[str, np.ndarray], scheme: str, config: BertConfig,
                 model_class: str | None = None, source: str = "") -> dict[str, np.ndarray]:
    """``{scheme path: array}`` -> canonical state dict of the one head class whose names match exactly.

    Consumes ``tensors`` (entries are popped as they are converted, so a transposed copy never
    coexists with the whole untransposed checkpoint: peak memory stays near one checkpoint).
    Raises ``WeightMappingError`` (a ValueError) with the closest class's missing / unexpected /
    mis-shaped tensors when no class matches; ``tensors`` is then left intact.
    """
    best: tuple[int, str, bool] | None = None
    shape_errors: list[tuple[str, tuple, tuple]] = []
    present = set(tensors)
    for cls, pooler in _candidates(model_class, config):
        shapes = canonical_shapes(config, cls, pooler)
        plan = [(name, *scheme_path(name, scheme)) for name in shapes]
        if {path for _, path, _ in plan} != present:
            distance = len({path for _, path, _ in plan} ^ present)
            if best is None or distance < best[0]:
                best = (distance, cls, pooler)
            continue
        # Names fit; shapes must too (else maybe another class: num_labels differs between heads).
        bad = [(name, np.shape(tensors[path])[::-1] if t else np.shape(tensors[path]), shapes[name])
               for name, path, t in plan
               if tuple(np.shape(tensors[path])[::-1] if t else np.shape(tensors[path])) != tuple(shapes[name])]
        if bad:
            shape_errors = bad
            continue
        return {name: transposed(tensors.pop(path), t) for name, path, t in plan}
    if shape_errors:
        raise WeightMappingError(f"{source}: tensor shapes do not fit the config", mismatched=shape_errors)
    assert best is not None
    _, cls, pooler = best
    try:  # the generic checker names every missing / unexpected tensor of the closest class
        from_scheme(tensors, scheme, canonical_shapes(config, cls, pooler))
    except WeightMappingError as e:
        raise WeightMappingError(f"{source}: tensors match no model class for this config "
                                 f"(closest: {cls}{'' if pooler else ' without pooler'})",
                                 e.missing, e.unexpected, e.mismatched) from None
    raise AssertionError("unreachable")  # pragma: no cover


def plan_scheme(state: Mapping[str, np.ndarray], scheme: str, config: BertConfig,
                model_class: str | None = None) -> tuple[str, list[tuple[str, str, bool]]]:
    """(class, [(canonical name, scheme path, transpose)]) for writing ``state`` in ``scheme``.

    Buffers are dropped and tied aliases (``cls.predictions.decoder.*``) folded onto their source
    after checking they hold the same values; the rest must be exactly one class's tensors.
    """
    names = [n for n in state if n.removeprefix("bert.") not in IGNORED_BUFFERS]
    errors = []
    for cls, pooler in _candidates(model_class, config):
        shapes = canonical_shapes(config, cls, pooler)
        aliases = tied_aliases(config, cls)
        core = [n for n in names if n not in aliases]
        if set(core) != set(shapes):
            errors.append((len(set(core) ^ set(shapes)), cls, sorted(set(shapes) - set(core)),
                           sorted(set(core) - set(shapes)), []))
            continue
        bad = [(n, np.shape(state[n]), s) for n, s in shapes.items() if tuple(np.shape(state[n])) != tuple(s)]
        for alias in set(names) & set(aliases):
            src = aliases[alias]
            if np.shape(state[alias]) != np.shape(state[src]) or not np.array_equal(state[alias], state[src]):
                bad.append((alias, np.shape(state[alias]), np.shape(state[src])))
        if bad:
            errors.append((0, cls, [], [], bad))
            continue
        return cls, [(n, *scheme_path(n, scheme)) for n in shapes]
    errors.sort(key=lambda e: e[0])
    _, cls, missing, unexpected, bad = errors[0]
    raise WeightMappingError(f"the weights are not exactly one model class's tensors for this config "
                             f"(closest: {cls}); cannot name them in scheme {scheme!r}", missing, unexpected, bad)


# ---------------------------------------------------------------------------------------------- misc
def require(module: str, extra: str, fmt: str):
    """Import ``module`` or raise ImportError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {fmt} format needs {module.split('.')[0]}: pip install bertrio[{extra}]") from None


Progress = Callable[[int], None]


def report(progress: Progress | None, n: int) -> None:
    """Every writer calls this after each tensor or file: ``progress(bytes just written)``."""
    if progress is not None:
        progress(int(n))


@dataclasses.dataclass(frozen=True)
class Format:
    """One weight format. ``read(path, config, **opts)`` -> canonical state dict; ``write(directory,
    config, state, shard_size=None, progress=None, **opts)`` -> file names written (every writer takes
    the same ``progress(nbytes)`` callback and, where ``shardable``, the same ``shard_size``)."""
    name: str
    files: tuple[str, ...]  # any of these in a directory means the format is present
    read: Callable[..., dict[str, np.ndarray]]
    write: Callable[..., list[str]] | None = None
    description: str = ""
    patterns: tuple[str, ...] = ()  # fnmatch patterns: a weight *file* of this format given by path
    dir_patterns: tuple[str, ...] = ()  # fnmatch patterns that identify the format inside a directory
    shardable: bool = False


__all__ = ["CheckpointError", "Format", "MAX_TENSORS", "MAX_HEADER_BYTES", "MAX_TREE_DEPTH", "WEIGHT_DTYPES",
           "BUFFER_DTYPES", "bfloat16", "check_dtype", "check_shape", "expected_shapes", "nbytes", "count_cap",
           "find_config", "require_config", "match_scheme", "plan_scheme", "transposed", "require", "report",
           "atomic_file", "atomic_path", "atomic_write_text", "atomic_directory", "CONFIG_FILES", "is_buffer"]
