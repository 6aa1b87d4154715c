"""Backend selection: ``BERT_BACKEND=torch|tf|flax`` or ``set_backend`` before first use."""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

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
