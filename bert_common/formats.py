"""Weight file formats as a registry: how each is recognised in a directory, read and written.

Every reader returns canonical ``{name: np.ndarray}`` (Hugging Face PyTorch names and layouts) without
executing code from the file; every writer takes the same. ``read_weights`` picks the first format
whose files are present, in ``FORMATS`` order (safetensors first).

Formats (each reader imports only what its format needs, when it is called):

=============  ===========================================  ==================  =========================
name           files                                        needs               naming
=============  ===========================================  ==================  =========================
safetensors    model.safetensors (+ sharded index)          numpy               canonical
pytorch        pytorch_model.bin (+ sharded index)          torch               canonical
tf-h5          tf_model.h5 (HF TF ``save_pretrained``)      h5py                scheme ``hf_tf_h5``
flax-msgpack   flax_model.msgpack (+ sharded index)         msgpack             scheme ``flax``
google-ckpt    bert_model.ckpt.index / .data-* (TF1 bundle) tensorflow          scheme ``google_ckpt``
=============  ===========================================  ==================  =========================

The last three name tensors by module path, and that path depends on the head class (a base
``BertModel`` has ``embeddings/...`` in Flax but a head has ``bert/embeddings/...``). Which class a
file holds is decided by trying every class in ``bert_common.weights.HEADS`` (with and without the
pooler) and taking the one whose names match the file exactly (``match_scheme``), or by the caller's
``model_class``. The renaming itself is ``bert_common.weights.to_scheme`` / ``from_scheme`` applied to
the schemes registered below: no format carries renaming code of its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
import os
import tempfile
from typing import Callable, Iterator, Mapping

import numpy as np

from bert_common.config import BertConfig
from bert_common.safetensors_io import CheckpointError
from bert_common.weights import (HEADS, IGNORED_BUFFERS, NamingScheme, WeightMappingError, canonical_shapes,
                                 from_scheme, head_spec, register_scheme, scheme_path, tied_aliases)

# ---------------------------------------------------------------------------------------------- schemes
# HF TF 2 (``TFBert*``) variable names, as stored in ``tf_model.h5`` after the model scope
# (``tf_bert_model/``), recorded from transformers 4.57.1 + tf-keras 2.21 (see docs/convert.md).
# The encoder lives under ``bert/`` in every class; Keras list layers are ``layer_._{i}``; the MLM head
# is the layer ``mlm___cls`` and the NSP head ``nsp___cls``; word embeddings are a bare ``weight``.
register_scheme(NamingScheme(
    "hf_tf_h5", "/",
    {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": ("embeddings", False),
     "norm.weight": ("gamma", False), "norm.bias": ("beta", False), "vector": ("bias", False)},
    module_renames=((r"^(embeddings|encoder|pooler)\b", r"bert.\1"),
                    (r"^cls\.predictions", "mlm___cls.predictions"),
                    (r"^cls\.seq_relationship", "nsp___cls.seq_relationship")),
    path_renames=((r"/layer/(\d+)/", r"/layer_._\1/"),),
    overrides={n: ("bert/embeddings/word_embeddings/weight", False)
               for n in ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")},
    suffix=":0",
))

# Google's original TF1 BERT (google-research/bert ``modeling.py``, ``run_pretraining.py``,
# ``run_classifier.py``, ``run_squad.py``): the encoder is always under ``bert/``; embedding tables are
# the bare scope name; output layers built with ``tf.get_variable`` keep [out, in] ``output_weights``.
register_scheme(NamingScheme(
    "google_ckpt", "/",
    {"dense.weight": ("kernel", True), "dense.bias": ("bias", False), "embedding": (None, False),
     "norm.weight": ("gamma", False), "norm.bias": ("beta", False), "vector": ("output_bias", False)},
    module_renames=((r"^(embeddings|encoder|pooler)\b", r"bert.\1"), (r"\blayer\.(\d+)", r"layer_\1")),
    overrides={
        "cls.seq_relationship.weight": ("cls/seq_relationship/output_weights", False),
        "cls.seq_relationship.bias": ("cls/seq_relationship/output_bias", False),
        "classifier.weight": ("output_weights", False),   # run_classifier.py
        "classifier.bias": ("output_bias", False),
        "qa_outputs.weight": ("cls/squad/output_weights", False),  # run_squad.py
        "qa_outputs.bias": ("cls/squad/output_bias", False),
    },
))


# ---------------------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    files: tuple[str, ...]  # any of these in a directory means the format is present
    read: Callable[..., dict[str, np.ndarray]]  # (dir or file, config, **opts) -> canonical
    write: Callable[..., list[str]] | None = None  # (dir, config, state, **opts) -> file names
    description: str = ""
    patterns: tuple[str, ...] = ()  # fnmatch patterns: a weight *file* of this format given by path
    dir_patterns: tuple[str, ...] = ()  # fnmatch patterns that identify the format inside a directory


def _lazy(module: str, attr: str) -> Callable:
    """A function that imports ``bert_common.<module>`` only when called (keeps this module light)."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"bert_common.{module}"), attr)(*args, **kwargs)
    call.__name__ = attr
    call.__qualname__ = f"{module}.{attr}"
    return call


def _read_safetensors(path: str, config: BertConfig | None, **_: object) -> dict[str, np.ndarray]:
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
                          _read_safetensors, _write_safetensors, "Hugging Face safetensors (default)",
                          patterns=("*.safetensors",)),
    "pytorch": Format("pytorch", ("pytorch_model.bin", "pytorch_model.bin.index.json"),
                      _lazy("formats_torch", "read"), _lazy("formats_torch", "write"),
                      "PyTorch pickle, read with torch.load(weights_only=True)", patterns=("*.bin",)),
    "tf-h5": Format("tf-h5", ("tf_model.h5",), _lazy("formats_h5", "read"), _lazy("formats_h5", "write"),
                    "Hugging Face TF 2 weights (h5py, never Keras deserialisation)", patterns=("*.h5",)),
    "flax-msgpack": Format("flax-msgpack", ("flax_model.msgpack", "flax_model.msgpack.index.json"),
                           _lazy("formats_msgpack", "read"), _lazy("formats_msgpack", "write"),
                           "Hugging Face Flax (flax.serialization msgpack)", patterns=("*.msgpack",)),
    "google-ckpt": Format("google-ckpt", ("bert_model.ckpt.index",), _lazy("formats_google", "read"),
                          _lazy("formats_google", "write"), "Google's original TF1 checkpoint + bert_config.json",
                          patterns=("*.index",), dir_patterns=("*.ckpt*.index",)),
}


def register_format(fmt: Format) -> None:
    FORMATS[fmt.name] = fmt


def _matches(f: Format, base: str, in_dir: bool = False) -> bool:
    # Inside a directory only the canonical names count: ``training_args.bin`` is not a weight file.
    patterns = f.dir_patterns if in_dir else f.patterns
    return base in f.files or any(fnmatch.fnmatch(base, p) for p in patterns)


def detect_formats(path: str) -> list[str]:
    """Names of every format with files present in directory ``path`` (or the one a file belongs to).

    A path that is not a file but has ``path + ".index"`` beside it is a TF checkpoint prefix.
    """
    if os.path.isdir(path):
        present = os.listdir(path)
        return [f.name for f in FORMATS.values() if any(_matches(f, b, in_dir=True) for b in present)]
    base = os.path.basename(path)
    if not os.path.exists(path) and os.path.exists(path + ".index"):
        return ["google-ckpt"]
    for f in FORMATS.values():  # sharded indexes first: their names end in .json, not the format's suffix
        if any(x.endswith(".index.json") and base.endswith(x) for x in f.files):
            return [f.name]
    for f in FORMATS.values():
        if _matches(f, base):
            return [f.name]
    return []


def read_weights(path: str, config: BertConfig | None = None, fmt: str | None = None, **opts
                 ) -> tuple[dict[str, np.ndarray], str]:
    """(canonical state dict, format name). Raises FileNotFoundError naming ``path`` when no weights.

    ``opts``: ``model_class`` (formats whose names depend on the head; inferred when absent).
    """
    if fmt and fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {sorted(FORMATS)}")
    found = [fmt] if fmt else detect_formats(path)
    if not found:
        wanted = sorted({n for f in FORMATS.values() for n in f.files})
        raise FileNotFoundError(f"no weights found in {path} (looked for {', '.join(wanted)})")
    return FORMATS[found[0]].read(path, config, **opts), found[0]


def write_weights(directory: str, config: BertConfig, state: Mapping[str, np.ndarray], fmt: str = "safetensors",
                  **opts) -> list[str]:
    if fmt not in FORMATS or FORMATS[fmt].write is None:
        writable = [n for n, f in FORMATS.items() if f.write is not None]
        raise ValueError(f"--to {fmt!r} is not one of {writable}")
    return FORMATS[fmt].write(directory, config, state, **opts)


# ---------------------------------------------------------------------------------------------- helpers
# Shared by the formats_* modules.
def require_config(path: str, config: BertConfig | None) -> BertConfig:
    """``config`` or the ``config.json`` / ``bert_config.json`` beside ``path``; ValueError otherwise."""
    if config is not None:
        return config
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in ("config.json", "bert_config.json"):
        file = os.path.join(directory, name)
        if os.path.isfile(file):
            return BertConfig.from_json_file(file)
    raise ValueError(f"reading {path} needs the model config (its tensor names depend on the layer count and "
                     f"head): no config.json or bert_config.json beside it; pass --config")


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
        preferred = [a for a in (config.to_dict().get("architectures") or []) if a in HEADS] if config else []
        rest = list(HEADS)
        if config is not None and not config.is_decoder:  # an encoder's LM head is the masked one
            rest.remove("BertForMaskedLM")
            rest.insert(rest.index("BertLMHeadModel"), "BertForMaskedLM")
        classes = preferred + [c for c in rest if c not in preferred]
    return [(c, p) for c in classes for p in (HEADS[c].pooler, not HEADS[c].pooler)]


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


def transposed(arr: np.ndarray, transpose: bool) -> np.ndarray:
    """C-contiguous ``arr`` or its transpose (a copy only when needed)."""
    return np.ascontiguousarray(np.asarray(arr).T if transpose else arr)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temp file name next to ``path`` for writers that need a name (h5py); renamed onto ``path``
    on success, removed on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def require(module: str, extra: str, fmt: str):
    """Import ``module`` or raise ImportError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {fmt} format needs {module.split('.')[0]}: pip install bertrio[{extra}]") from None


__all__ = ["Format", "FORMATS", "CheckpointError", "register_format", "detect_formats", "read_weights",
           "write_weights", "match_scheme", "plan_scheme", "require_config"]
