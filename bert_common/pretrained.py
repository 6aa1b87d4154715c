"""What every backend's ``from_pretrained`` / ``save_pretrained`` shares, framework-free.

A backend calls ``load_for_backend`` to get the config and its parameters already renamed and transposed
into its own naming scheme (``bert_common.weights.SCHEMES``), and ``save_from_backend`` with its
parameters in that scheme to write the canonical checkpoint. No backend renames tensors itself.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from bert_common.checkpoint import load_state_dict, save_checkpoint
from bert_common.config import BertConfig
from bert_common.weights import LoadReport, canonical_shapes, from_scheme, match_state_dict, to_scheme

logger = logging.getLogger("bertrio")


def resolve_config(path: str | os.PathLike | None, config: BertConfig | None, overrides: Mapping[str, Any]
                   ) -> BertConfig:
    if config is None:
        if path is None:
            raise ValueError("from_pretrained needs a path or a config")
        config = BertConfig.from_pretrained(path)
    if overrides:
        config = config.replace(**overrides)
    return config


def load_for_backend(path: str | os.PathLike, model_class: str, scheme: str, *, config: BertConfig | None = None,
                     allow_new_head: bool = False, add_pooling_layer: bool | None = None,
                     state: Mapping[str, np.ndarray] | None = None, seed: int = 0, **config_overrides: Any
                     ) -> tuple[BertConfig, dict[str, np.ndarray], LoadReport]:
    """(config, ``{scheme path: np.ndarray}``, report) for ``model_class`` from a checkpoint directory.

    ``state`` (canonical names) can be given instead of reading weights from ``path``.
    ``config_overrides`` (e.g. ``num_labels=5``, ``attn_implementation="eager"``) change the config
    before weights are matched. Head tensors absent from the checkpoint are initialised only with
    ``allow_new_head=True``; the report lists them and a warning names them.
    """
    path = os.fspath(path) if path is not None else None
    config = resolve_config(path, config, config_overrides)
    if state is None:
        state, _ = load_state_dict(path, config)
    params, report = match_state_dict(state, config, model_class, add_pooling_layer=add_pooling_layer,
                                      allow_new_head=allow_new_head, seed=seed)
    if report.initialized:
        logger.warning("%s: newly initialised (not in the checkpoint): %s", model_class, ", ".join(report.initialized))
    if report.unexpected:
        logger.info("%s: checkpoint tensors not used: %s", model_class, ", ".join(report.unexpected))
    return config, to_scheme(params, scheme), report


def canonical_from_backend(tensors: Mapping[str, np.ndarray], config: BertConfig, model_class: str, scheme: str,
                           add_pooling_layer: bool | None = None) -> dict[str, np.ndarray]:
    """A backend's ``{scheme path: array}`` -> canonical state dict, strictly checked."""
    return from_scheme(tensors, scheme, canonical_shapes(config, model_class, add_pooling_layer))


def save_from_backend(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], config: BertConfig,
                      model_class: str, scheme: str, add_pooling_layer: bool | None = None,
                      shard_size: str | int | None = None) -> str:
    """Write ``config.json`` + ``model.safetensors`` in the canonical layout from backend tensors."""
    state = canonical_from_backend(tensors, config, model_class, scheme, add_pooling_layer)
    return save_checkpoint(path, config, state, shard_size=shard_size, architectures=[model_class])
