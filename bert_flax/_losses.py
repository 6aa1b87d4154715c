"""The losses of the Flax heads (Hugging Face's reductions), kept out of ``modeling.py``. Every loss is
fp32 whatever the compute dtype; which loss a head uses is ``bert_common.semantics``'s rule."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bert_common import semantics
from bert_common.config import BertConfig

IGNORE_INDEX = semantics.IGNORE_INDEX


def _ce(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean CE over labels != ignore_index (HF's CrossEntropyLoss). logits (..., C), labels (...) int.

    Every label ignored gives 0/0 = NaN, as in HF.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    keep = labels != ignore_index
    picked = jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return -(picked * keep).sum() / keep.sum()


def mse_loss(pred, target):
    return jnp.mean((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def bce_with_logits(logits, targets):
    """Mean binary CE on logits, in the stable form max(x, 0) - x*y + log(1 + exp(-|x|))."""
    x, y = logits.astype(jnp.float32), targets.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def causal_lm_loss(logits, labels):
    """Next-token CE: logits[:, :-1] (B, S-1, V) against labels[:, 1:] (B, S-1), ignoring -100."""
    return _ce(logits[:, :-1], labels[:, 1:])


def sequence_classification_loss(logits, labels, config: BertConfig):
    """Loss chosen by ``semantics.problem_type``: MSE (regression), CE (single label), BCE-with-logits
    (multi-label, mean). logits (B, L)."""
    problem = semantics.problem_type(config, jnp.issubdtype(labels.dtype, jnp.integer))
    if problem == "regression":
        if config.num_labels == 1:
            return mse_loss(logits.reshape(-1), labels.reshape(-1))
        return mse_loss(logits, labels)
    if problem == "single_label_classification":
        return _ce(logits.reshape(-1, config.num_labels), labels.reshape(-1).astype(jnp.int32))
    return bce_with_logits(logits, labels)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """(CE(start) + CE(end)) / 2; positions (B,) clamped to [0, S] and S (outside the text) ignored."""
    S = start_logits.shape[1]
    sp = jnp.clip(start_positions.reshape(-1), 0, S)
    ep = jnp.clip(end_positions.reshape(-1), 0, S)
    return (_ce(start_logits, sp, ignore_index=S) + _ce(end_logits, ep, ignore_index=S)) / 2
