"""Training, framework-free part: one set of hyper-parameters, one schedule, one no-decay rule, one
train-state layout, one loop. Each backend supplies only a ``Trainer`` (``bert_<x>.training``) that
realises the optimizer step with its own library (``torch.optim.AdamW``, Keras ``AdamW``, ``optax.adamw``).

Everything here is NumPy / standard library; no framework is imported. Modules: ``loop`` (the training
loop: data order, logging, checkpoints, resume), ``state_io`` (train-state checkpoints on disk),
``finetune`` (JSON Lines readers and metrics of the fine-tuning tasks), ``runner`` (what the ``pretrain`` /
``finetune`` commands share: backend by name, devices, inference), ``synthetic`` (a deterministic in-memory
pretraining dataset for tests and parity runs).

Shape legend: B batch (global, over all devices), S sequence length, L labels per example.

The batch contract (what the data pipeline yields and every ``Trainer.step`` takes) is a dict of NumPy
arrays with Hugging Face's names:

==========================  ==========  =======  ======================================================
key                         shape       dtype    meaning
==========================  ==========  =======  ======================================================
``input_ids``               (B, S)      int32    token ids
``attention_mask``          (B, S)      int32    1 = real token, 0 = padding
``token_type_ids``          (B, S)      int32    segment ids
``labels``                  (B, S)/(B,) int32    MLM: target id at masked positions, -100 elsewhere;
                                                 classification: class id (float32 for regression)
``next_sentence_label``     (B,)        int32    pretraining only: 1 = random next sentence
``start_positions``         (B,)        int32    question answering only
``end_positions``           (B,)        int32    question answering only
==========================  ==========  =======  ======================================================
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import numpy as np

from bert_common.weights import no_weight_decay

# ---------------------------------------------------------------------------------------------- hyper-parameters
@dataclasses.dataclass
class TrainingArguments:
    """BERT's AdamW recipe, named once for every backend.

    ``learning_rate`` is the peak; the rate rises linearly from 0 over ``warmup_steps`` (or
    ``warmup_ratio`` × ``max_steps`` when ``warmup_steps`` is None) and then falls linearly to 0 at
    ``max_steps`` (``lr_at``). Weight decay is decoupled (AdamW) and skipped for biases and LayerNorm
    weights (``decays``). Gradients are clipped to a global L2 norm of ``max_grad_norm`` (None: off)
    after accumulating ``gradient_accumulation_steps`` micro-batches of ``batch_size / accumulation``.
    """
    learning_rate: float = 1e-4
    max_steps: int = 1000
    batch_size: int = 32                 # global: summed over devices and accumulation micro-batches
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-6
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    seed: int = 0
    dtype: str = "float32"               # float32 | bfloat16 (mixed precision: bf16 compute, fp32 master weights)
    devices: int = 1
    parallelism: str = "data"            # data: replicate weights, split the batch | fsdp: also shard weights
    dropout: bool = True                 # False: train with dropout off (deterministic, used by parity checks)
    save_every: int | None = None        # write a train-state checkpoint every K steps (and at the end)
    log_every: int = 1

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "devices", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.parallelism not in ("data", "fsdp"):
            raise ValueError(f"parallelism must be 'data' or 'fsdp', got {self.parallelism!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        per_update = self.devices * self.gradient_accumulation_steps
        if self.batch_size % per_update:
            raise ValueError(f"batch_size {self.batch_size} does not divide over devices ({self.devices}) x "
                             f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) = {per_update}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"save_every must be a positive integer or None, got {self.save_every!r}")

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_ratio * self.max_steps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRETRAIN_DEFAULTS = {"learning_rate": 1e-4}
FINETUNE_DEFAULTS = {"learning_rate": 2e-5, "batch_size": 32}


def lr_at(step: int, args: TrainingArguments) -> float:
    """Learning rate used by update number ``step`` (0-based): linear warmup, then linear decay to 0.

    The same function every backend's schedule is built from (torch ``LambdaLR`` with
    ``lr_at(step) / learning_rate``, a Keras ``LearningRateSchedule``, an optax schedule).
    """
    warmup, total = args.num_warmup_steps, args.max_steps
    if warmup and step < warmup:
        return args.learning_rate * step / warmup
    return args.learning_rate * max(0.0, (total - step) / max(1, total - warmup))


def decays(canonical_name: str) -> bool:
    """Whether AdamW's weight decay applies to this canonical parameter (not to biases, not to LayerNorm)."""
    return not no_weight_decay(canonical_name)


# ---------------------------------------------------------------------------------------------- loss reduction
# The loss of an update is the Hugging Face loss of the whole global batch, as if it ran on one device in
# one piece: the MLM term is the mean over every labelled token of the global batch, per-row terms (NSP,
# classification, QA) the mean over its rows. A shard (one device's part of one accumulation micro-batch)
# therefore contributes sum(its per-token losses) / global count, not its own mean: with token-weighted
# shards N devices (or K accumulation steps) give the same loss and gradients as 1 device, which the
# distributed tests check. ``loss_normalizers`` gives the global counts, computed on the host.
def loss_normalizers(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Global denominators of a batch (see above): ``tokens`` = labelled MLM/token-classification
    positions (labels != -100, at least 1), ``rows`` = examples in the batch."""
    labels = batch.get("labels")
    rows = int(np.shape(batch["input_ids"])[0])
    tokens = int(np.sum(np.asarray(labels) != -100)) if labels is not None and np.ndim(labels) == 2 else rows
    return {"tokens": max(tokens, 1), "rows": rows}


# Which cross-entropy terms each head's training loss sums, as data: (output field, label key, normaliser of
# ``loss_normalizers``). Each backend's trainer turns a row into sum(CE over the shard) / global count.
# Sequence classification (problem_type) and question answering (clamped spans) have their own rules.
CE_LOSS_TERMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "BertForPreTraining": (("prediction_logits", "labels", "tokens"),
                           ("seq_relationship_logits", "next_sentence_label", "rows")),
    "BertForMaskedLM": (("logits", "labels", "tokens"),),
    "BertForTokenClassification": (("logits", "labels", "tokens"),),
    "BertForNextSentencePrediction": (("logits", "labels", "rows"),),
    "BertForMultipleChoice": (("logits", "labels", "rows"),),
}


# Heads whose vocabulary logits the trainers compute only at the labelled positions (model class -> output
# field), as Google's BERT gathers ``masked_lm_positions``: at 15 % masking the decoder matmul (about a fifth
# of a BERT-base step's FLOPs, forward and backward) and the log-softmax over the vocabulary shrink several
# fold. The loss sums the same cross-entropy terms and unlabelled positions carry no gradient either way, so
# the update is the full-logits one up to the order of float additions.
SPARSE_MLM: dict[str, str] = {"BertForPreTraining": "prediction_logits", "BertForMaskedLM": "logits"}
MLM_POSITIONS = "mlm_positions"  # batch key of the (B, P) positions, added by ``with_mlm_positions``
MIN_MLM_SLOTS = 8


def mlm_slots(count: int, seq_len: int) -> int:
    """P, the number of gathered positions per row for a batch whose busiest row has ``count`` labelled
    tokens: the next power of two >= count, at least ``MIN_MLM_SLOTS``, at most ``seq_len``. Powers of two
    keep the compiled shapes of jitted steps (TF/XLA, JAX) to a handful across batches."""
    slots = MIN_MLM_SLOTS
    while slots < count:
        slots *= 2
    return min(slots, seq_len)


def with_mlm_positions(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` plus ``MLM_POSITIONS``: (B, P) int32, each row's labelled positions in order, then
    unlabelled ones (whose labels are -100, so the extra slots add nothing to the loss). ``labels``
    (B, S) int stays as it is; a trainer gathers it and the last hidden states with these positions.
    Batches without 2-D ``labels`` come back unchanged."""
    labels = batch.get("labels")
    if labels is None or np.ndim(labels) != 2:
        return dict(batch)
    labels = np.asarray(labels)
    unlabelled = labels == -100
    # A stable sort of the "unlabelled" flag lists each row's labelled positions first, in their order.
    order = np.argsort(unlabelled, axis=1, kind="stable")
    slots = mlm_slots(int((~unlabelled).sum(1).max(initial=0)), labels.shape[1])
    return {**batch, MLM_POSITIONS: np.ascontiguousarray(order[:, :slots], dtype=np.int32)}


def split_batch(batch: Mapping[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """Cut a batch into ``parts`` consecutive row blocks of equal size (B must divide by ``parts``).

    The shard layout every backend uses: the global batch (B rows) splits into
    ``gradient_accumulation_steps`` micro-batches, each of which splits over the devices; device r of
    micro-batch k holds rows ``[k*B/K + r*B/(K*N), ...)``. With token-weighted losses the layout does not
    change the result (sums commute), only its fp32 rounding.
    """
    rows = int(np.shape(batch["input_ids"])[0])
    if parts < 1 or rows % parts:
        raise ValueError(f"a batch of {rows} rows does not split into {parts} equal parts")
    n = rows // parts
    return [{k: np.asarray(v)[i * n:(i + 1) * n] for k, v in batch.items()} for i in range(parts)]


# Gradient clipping is torch.nn.utils.clip_grad_norm_'s: g *= min(1, max_norm / (global_norm + 1e-6)), the
# global L2 norm taken over every parameter's gradient. The 1e-6 is part of the definition (optax's
# clip_by_global_norm omits it; the difference is ~1e-6 / norm relative, below fp32 noise for norms >~ 1).
CLIP_EPS = 1e-6


def clip_coefficient(global_norm: float, max_norm: float | None) -> float:
    """The factor gradients are multiplied by (1.0 when clipping is off or the norm is small enough)."""
    if max_norm is None:
        return 1.0
    return float(min(1.0, max_norm / (global_norm + CLIP_EPS)))


def dropout_seed(seed: int, step: int, *parts: int) -> int:
    """A 32-bit seed for the dropout masks of update ``step`` (and e.g. micro-batch, device): dropout is
    keyed by position in the run, not by a generator's history, so a resumed run draws the same masks."""
    return int(np.random.SeedSequence([seed, step, *parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- train state
# A train-state checkpoint is a directory ``checkpoint-{step:08d}`` (written whole to a temp sibling and
# renamed into place) holding:
#   config.json, model.safetensors      the canonical model (loads in every backend and in HF)
#   optimizer.safetensors               AdamW moments under canonical names, fp32:
#                                       ``exp_avg.{name}`` (first moment), ``exp_avg_sq.{name}`` (second)
#   trainer_state.json                  {"step": updates done, "backend": ..., "args": TrainingArguments,
#                                        "data": {...position in the data, seed, epoch...}, "rng": ...}
# Moments follow torch.optim.AdamW's definitions (bias correction applied at use, not stored), so a
# state written by one backend resumes in another.
MOMENT_PREFIXES = ("exp_avg", "exp_avg_sq")
CHECKPOINT_PREFIX = "checkpoint-"


@dataclasses.dataclass
class TrainState:
    """Backend-neutral snapshot of a run: canonical weights, AdamW moments and the update count."""
    params: dict[str, np.ndarray]          # canonical name -> fp32 array
    exp_avg: dict[str, np.ndarray]         # canonical name -> fp32 array, same shapes
    exp_avg_sq: dict[str, np.ndarray]
    step: int                              # optimizer updates done so far


class Trainer(Protocol):
    """What each backend's ``bert_<x>.training.Trainer`` provides (the loop and the CLI use only this).

    ``Trainer(model, args: TrainingArguments)`` wraps a backend model (a head with a loss) and builds
    the optimizer (AdamW with ``lr_at`` as schedule, ``decays`` as mask, clipping, accumulation, dtype,
    devices). Optional attributes read by the loop: ``rank`` (int, default 0; only rank 0 writes files)
    and ``model`` (the model being trained, for evaluation; default the one passed in).
    """

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """One optimizer update on a global batch (the batch contract above); returns the mean loss."""

    def get_state(self) -> TrainState:
        """Canonical weights + moments + step, as NumPy (gathered from every device)."""

    def set_state(self, state: TrainState) -> None:
        """Restore weights, moments and step (from any backend's ``get_state``)."""


__all__ = ["CE_LOSS_TERMS", "loss_normalizers", "split_batch", "clip_coefficient", "CLIP_EPS", "dropout_seed", "TrainingArguments", "PRETRAIN_DEFAULTS", "FINETUNE_DEFAULTS", "lr_at", "decays", "TrainState",
           "Trainer", "MOMENT_PREFIXES", "CHECKPOINT_PREFIX"]
