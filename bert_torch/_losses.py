"""The losses of the bert_torch heads (HF torch BERT's, written with ``torch.nn.functional``): which one a
call uses is decided by ``bert_common.semantics``; these compute it. Losses are reduced in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bert_common import semantics
from bert_common.config import BertConfig

IGNORE_INDEX = semantics.IGNORE_INDEX


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labels != -100 (NaN when all are ignored, as in HF). (..., L), (...)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                           ignore_index=IGNORE_INDEX)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss: logits[:, :-1] (B, S-1, V) against labels[:, 1:]."""
    return _ce(logits[:, :-1], labels[:, 1:])


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: BertConfig) -> torch.Tensor:
    """Loss chosen by ``semantics.problem_type``: MSE (regression), CE (single label), BCE-with-logits
    (multi-label, mean). logits (B, L); labels (B,) or (B, L)."""
    problem = semantics.problem_type(config, not labels.dtype.is_floating_point)
    logits = logits.float()
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().float())
        return F.mse_loss(logits, labels.float())
    if problem == "single_label_classification":
        return _ce(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2; positions (B,) clamped to [0, S] and S (outside the text) ignored."""
    S = start_logits.shape[1]
    start = start_positions.view(-1).clamp(0, S)
    end = end_positions.view(-1).clamp(0, S)
    return (F.cross_entropy(start_logits.float(), start, ignore_index=S)
            + F.cross_entropy(end_logits.float(), end, ignore_index=S)) / 2
