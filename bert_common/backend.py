"""Backend selection: ``BERT_BACKEND=torch|tf|flax`` or ``set_backend`` before first use."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Iterator

# backend name -> (package, the framework modules it needs)
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch": ("bert_torch", ("torch",)),
    "tf": ("bert_tf", ("tensorflow", "keras")),
    "flax": ("bert_flax", ("jax", "flax", "optax")),
}
ALIASES = {"pytorch": "torch", "pt": "torch", "tensorflow": "tf", "keras": "tf", "jax": "flax"}
ENV_VAR = "BERT_BACKEND"
_selected: str | None = None


def installed_backends() -> list[str]:
    """Backends whose frameworks are importable (found on the path, not imported)."""
    return [name for name, (_, needs) in BACKENDS.items()
            if all(importlib.util.find_spec(m) is not None for m in needs)]


def _normalise(name: str, source: str) -> str:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a backend; choose one of {list(BACKENDS)} "
                         f"(installed: {installed_backends() or 'none'})")
    return key


def set_backend(name: str) -> None:
    """Select the backend used by ``bert_common.auto``; raises ValueError if unknown or not installed."""
    global _selected
    key = _normalise(name, "backend")
    _require(key)
    _selected = key


def _require(key: str) -> None:
    if key not in installed_backends():
        raise ImportError(f"backend {key!r} needs {', '.join(BACKENDS[key][1])}, which is not installed; "
                          f"installed backends: {installed_backends() or 'none'} "
                          f"(pip install 'bertrio[{key}]')")


def get_backend() -> str:
    """The selected backend: ``set_backend`` wins, then ``$BERT_BACKEND``, then the first installed
    of torch, tf, flax."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_VAR)
    if env:
        key = _normalise(env, ENV_VAR)
        _require(key)
        return key
    installed = installed_backends()
    if not installed:
        raise ImportError("no backend is installed: pip install 'bertrio[torch]' (or [tf], [flax], [all])")
    return installed[0]


def backend_module(name: str | None = None) -> ModuleType:
    key = get_backend() if name is None else _normalise(name, "backend")
    _require(key)
    return importlib.import_module(BACKENDS[key][0])


def backend_submodule(name: str, submodule: str) -> ModuleType:
    """The module ``<backend package>.<submodule>`` of backend ``name`` (e.g. ``("torch", "export")`` ->
    ``bert_torch.export``), imported by name so framework-free code never imports a backend statically."""
    key = _normalise(name, "backend")
    _require(key)
    return importlib.import_module(f"{BACKENDS[key][0]}.{submodule}")


class _Refuse:
    """A meta-path finder under which importing any of ``names`` (or their submodules) raises
    ModuleNotFoundError, as if not installed. ``sys.modules`` is not touched, so libraries that look there
    for an optional framework (e.g. array-API helpers asking whether torch is loaded) see nothing odd."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is not imported while another backend loads its framework",
                                      name=fullname)
        return None


@contextlib.contextmanager
def own_framework_only(backend: str) -> Iterator[None]:
    """While a backend imports its framework, the other backends' frameworks that are not imported yet
    cannot be (``import`` raises ModuleNotFoundError), so a framework's optional import of another stays
    off. Needed by TensorFlow: its ``tensorflow.lite.python.util`` imports jax whenever jax is installed
    (in a ``try``/``except ImportError``), which would put jax (about 1 s and its memory) under
    ``import bert_tf``. Frameworks imported before the block, or after it, are untouched."""
    own = set(BACKENDS[backend][1])
    foreign = {m for name, (_, needs) in BACKENDS.items() if name != backend for m in needs} - own
    finder = _Refuse(m for m in foreign if m not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
