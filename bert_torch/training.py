"""PyTorch training step: plain ``torch.optim.AdamW`` + ``LambdaLR`` over ``bert_common.training``'s spec.

``Trainer(model, args)`` implements the ``bert_common.training.Trainer`` protocol for any ``bert_torch``
head with a loss: gradient accumulation, token-weighted loss reduction, ``clip_grad_norm_``, bf16 autocast
with fp32 master weights, and — when ``torch.distributed`` is initialised (``torchrun``) — DDP
(``parallelism="data"``) or FSDP2 ``fully_shard`` (``parallelism="fsdp"``). The loop, the data order, the
checkpoints and the CLI are framework-free (``bert_common.training.loop``).

Shapes: a global batch is the batch contract of ``bert_common.training`` (B rows, S tokens, int32).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from bert_common.training import (CE_LOSS_TERMS, MLM_POSITIONS, SPARSE_MLM, TrainingArguments, TrainState, decays,
                                  dropout_seed, loss_normalizers, lr_at, split_batch)

IGNORE_INDEX = -100
# Batch keys the model's forward takes; the loss keys are read by the loss table below.
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LOSS_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions")


# ---------------------------------------------------------------------------------------------- losses
# Each head's Hugging Face loss, written as a shard's contribution: sum of its per-token / per-row terms
# divided by the GLOBAL counts (``loss_normalizers``). Summed over shards (micro-batches, devices) this is
# exactly the HF loss of the whole global batch, so accumulation and data parallelism change nothing.
def _ce_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Sum of cross-entropy terms over labels != ignore_index. logits (..., C) any float, labels (...)."""
    return F.cross_entropy(_up(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
                           ignore_index=ignore_index, reduction="sum")


def _up(x: torch.Tensor) -> torch.Tensor:
    """Losses are computed in fp32 (fp64 when the model runs in fp64, the parity tests' reference)."""
    return x if x.dtype == torch.float64 else x.float()


def _sequence_classification(out, b, n, config) -> torch.Tensor:
    logits, labels = _up(out.logits), b["labels"]
    problem = config.problem_type
    if problem is None:  # HF's inference of the problem type, without mutating the config
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if not labels.dtype.is_floating_point else
                   "multi_label_classification")
    if problem == "single_label_classification":
        return _ce_sum(logits, labels) / n["rows"]
    per_row = config.num_labels  # MSE / BCE are means over every (row, label) entry
    target = labels.to(logits.dtype).reshape(logits.shape)
    if problem == "regression":
        return F.mse_loss(logits, target, reduction="sum") / (n["rows"] * per_row)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / (n["rows"] * per_row)


def _span(out, b, n, config) -> torch.Tensor:
    S = out.start_logits.shape[1]  # positions are clamped to [0, S]; S (outside the text) is ignored, as in HF
    start, end = b["start_positions"].long().clamp(0, S), b["end_positions"].long().clamp(0, S)
    return (_ce_sum(out.start_logits, start, S) + _ce_sum(out.end_logits, end, S)) / (2 * n["rows"])


# model class -> shard contribution (outputs, shard tensors, global counts, config) -> scalar fp32 tensor
def _ce_terms(terms):
    """A loss function summing ``CE_LOSS_TERMS`` rows: sum(CE over the shard) / global count each."""
    return lambda o, b, n, c: sum(_ce_sum(o[field], b[label]) / n[norm] for field, label, norm in terms)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    **{cls: _ce_terms(terms) for cls, terms in CE_LOSS_TERMS.items()},
    "BertForSequenceClassification": _sequence_classification,
    "BertForQuestionAnswering": _span,
}

class _TrainingForward(torch.nn.Module):
    """The module DDP / FSDP wrap: ``forward(inputs, targets) -> (outputs, targets)``.

    ``inputs``: the model's input tensors (B, S) int64; ``targets``: the loss keys. For ``SPARSE_MLM`` heads
    (``bert_common.training``) ``targets`` also carries ``MLM_POSITIONS``: the (n,) int64 flat indices
    (row * S + column) of the shard's n labelled tokens. The encoder runs as usual, then the MLM head runs
    on those (n, H) states only, giving (n, V) logits, and ``targets["labels"]`` becomes their (n,)
    labels. The indices come from the host (``Trainer._tensors``), so nothing waits on the device, as a
    boolean index of a device mask would; eager torch compiles nothing, so the exact n costs no
    recompilation (the TF and Flax trainers pad to a power of two per row instead, for their compilers).
    Every other head is the model's own forward. Owning no parameter of its own, it leaves every parameter
    name of ``model`` unchanged."""

    def __init__(self, model: torch.nn.Module, sparse_field: str | None):
        super().__init__()
        self.model, self.sparse_field = model, sparse_field

    def forward(self, inputs: dict, targets: dict) -> tuple[Mapping[str, torch.Tensor], dict]:
        model = self.model
        if self.sparse_field is None or MLM_POSITIONS not in targets:
            return model(**inputs, return_dict=True), targets
        targets = dict(targets)
        where = targets.pop(MLM_POSITIONS)  # (n,)
        out = model.bert(**inputs, return_dict=True)
        states = out["last_hidden_state"].flatten(0, 1)[where]  # (n, H)
        fields = {self.sparse_field: model.cls.predictions(states)}  # (n, V)
        if hasattr(model.cls, "seq_relationship"):
            fields["seq_relationship_logits"] = model.cls.seq_relationship(out["pooler_output"])  # (B, 2)
        return fields, {**targets, "labels": targets["labels"].flatten()[where]}


# ---------------------------------------------------------------------------------------------- helpers
def _dist() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full (gathered) plain tensor from a DTensor shard (FSDP2); plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(value: np.ndarray, ref: torch.Tensor) -> torch.Tensor:
    """A full NumPy array as a tensor laid out like ``ref`` (its device, and its shard when a DTensor)."""
    t = torch.from_numpy(np.array(value)).to(device=ref.device, dtype=ref.dtype)
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(t, ref.device_mesh, ref.placements)
    return t


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One AdamW update per ``step(batch)`` on a ``bert_torch`` head (see the module docstring).

    ``model``: a ``bert_torch`` model with a loss (its class names its loss in ``LOSSES``), fp32.
    ``args``: ``bert_common.training.TrainingArguments``. Under ``torchrun`` the model is wrapped in DDP or
    FSDP2 here, and every rank must call ``step`` / ``get_state`` / ``set_state`` with the same global batch.
    """

    def __init__(self, model: torch.nn.Module, args: TrainingArguments, *, master_dtype: torch.dtype = torch.float32):
        model_class = getattr(model, "model_class", type(model).__name__)
        if model_class not in LOSSES:
            raise ValueError(f"model of class {model_class} has no training loss here; trainable heads: "
                             f"{sorted(LOSSES)}")
        self.args, self.model_class, self.config = args, model_class, model.config
        self.rank, self.world = _dist()
        if self.world > 1 and args.devices != self.world:
            raise ValueError(f"devices={args.devices} but torch.distributed runs {self.world} processes; "
                             f"launch with torchrun --nproc-per-node {args.devices}")
        if self.world == 1 and args.devices > 1:
            raise ValueError(f"devices={args.devices} needs torchrun --nproc-per-node {args.devices} "
                             f"(bertrio pretrain --devices launches it)")
        self.device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                       else torch.device("cpu"))
        # fp32 master weights; float64 only for reference runs (the parity tests' fp64 truth)
        self.master_dtype = master_dtype
        self.model = model.to(device=self.device, dtype=master_dtype)
        self.model.train(args.dropout)
        # The MLM output field computed at labelled positions only, or None; read once: one Trainer, one path.
        self.sparse_field = SPARSE_MLM.get(model_class)
        self.wrapped = self._wrap(_TrainingForward(self.model, self.sparse_field))
        # Names are read after wrapping: fully_shard swaps each parameter for a DTensor in place.
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = dict(self.model.named_parameters())
        groups = [{"params": [self.params[n] for n in self.names if decays(n)], "weight_decay": args.weight_decay},
                  {"params": [self.params[n] for n in self.names if not decays(n)], "weight_decay": 0.0}]
        # Base lr 1.0 so that LambdaLR's factor IS lr_at(step): the rate equals the spec bit for bit
        # (lr * (lr_at / lr) can be one ulp off). The fused kernel (CPU and CUDA, DTensor shards included)
        # does one pass over each tensor where the default for-loop does six: a BERT-base update drops from
        # about 2.5 s to 0.7 s on two CPU cores, with the same formula (ulp-level differences).
        self.optimizer = torch.optim.AdamW(groups, lr=1.0, betas=(args.adam_beta1, args.adam_beta2),
                                           eps=args.adam_epsilon, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, args))
        self.steps_done = 0

    def _wrap(self, forward: _TrainingForward) -> torch.nn.Module:
        if self.world == 1:
            return forward
        model = forward.model
        if self.args.parallelism == "fsdp":
            from torch.distributed.fsdp import fully_shard
            # FSDP2 warns that our outputs are views; nothing modifies them in place (the N-device = 1-device
            # test checks the gradients), so the warning is noise here.
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            for layer in model.bert.encoder.layer if hasattr(model, "bert") else model.encoder.layer:
                fully_shard(layer)
            fully_shard(forward)  # the root: the sparse MLM path calls model.bert, not model.forward
            return forward
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- one update
    def _tensors(self, shard: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
        inputs = {k: torch.from_numpy(np.ascontiguousarray(shard[k])).long().to(self.device)
                  for k in INPUT_KEYS if k in shard}
        targets = {}
        for k in LOSS_KEYS:
            if k in shard:
                a = np.ascontiguousarray(shard[k])
                t = torch.from_numpy(a)
                targets[k] = (t.float() if np.issubdtype(a.dtype, np.floating) else t.long()).to(self.device)
        if self.sparse_field and np.ndim(shard.get("labels")) == 2:  # flat indices of the labelled tokens, host-made
            where = np.flatnonzero(np.asarray(shard["labels"]) != IGNORE_INDEX)
            targets[MLM_POSITIONS] = torch.from_numpy(where).to(self.device)
        return inputs, targets

    def _sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an update."""
        if self.world == 1 or last:
            if self.world > 1 and self.args.parallelism == "fsdp":
                self.wrapped.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.args.parallelism == "fsdp":
            self.wrapped.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def _autocast(self):
        if self.args.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """One optimizer update on the global batch; returns the HF loss of the whole batch (float)."""
        args, K = self.args, self.args.gradient_accumulation_steps
        rows = int(np.shape(batch["input_ids"])[0])
        if rows != args.batch_size:
            raise ValueError(f"batch has {rows} rows but batch_size={args.batch_size}")
        norms = loss_normalizers(batch)
        loss_fn = LOSSES[self.model_class]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for k, micro in enumerate(split_batch(batch, K)):
            shard = split_batch(micro, self.world)[self.rank]
            inputs, targets = self._tensors(shard)
            if args.dropout:
                torch.manual_seed(dropout_seed(args.seed, self.steps_done, k, self.rank))
            with self._sync(k == K - 1):
                with self._autocast():
                    out, targets = self.wrapped(inputs, targets)
                loss = loss_fn(out, targets, norms, self.config)
                # DDP and FSDP average gradients over ranks; the contributions must be summed.
                (loss * self.world).backward()
            total += loss.detach().double()
        if self.world > 1:
            torch.distributed.all_reduce(total)
        for p in self.params.values():  # a parameter the loss does not reach steps with a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if args.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return float(total)

    # -- state
    def get_state(self) -> TrainState:
        """Canonical fp32 weights and moments (gathered from every rank under FSDP), and the update count.
        Every rank must call it (the gather is a collective)."""
        params, m, v = {}, {}, {}
        for n in self.names:
            p = self.params[n]
            # copies: a CPU tensor's .numpy() would share memory with the live parameter / moment
            params[n] = _full(p.detach()).to(self.master_dtype).cpu().numpy().copy()
            st = self.optimizer.state.get(p, {})
            for store, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
                store[n] = (_full(st[key]).to(self.master_dtype).cpu().numpy().copy() if key in st
                            else np.zeros(params[n].shape, params[n].dtype))
        return TrainState(params=params, exp_avg=m, exp_avg_sq=v, step=self.steps_done)

    def set_state(self, state: TrainState) -> None:
        """Load weights, moments and the update count (from any backend's ``get_state``)."""
        missing = [n for n in self.names if n not in state.params]
        if missing:
            raise ValueError(f"train state lacks {len(missing)} parameters of {self.model_class}, e.g. {missing[:3]}")
        step = int(state.step)
        with torch.no_grad():
            for n in self.names:
                p = self.params[n]
                if tuple(state.params[n].shape) != tuple(p.shape):
                    raise ValueError(f"train state {n} has shape {tuple(state.params[n].shape)}, the model "
                                     f"{tuple(p.shape)}")
                p.copy_(_like(state.params[n], p))
                if step > 0:
                    self.optimizer.state[p] = {  # the fused kernel wants the step on the parameter's device
                        "step": torch.tensor(float(step), dtype=torch.float32, device=p.device),
                        "exp_avg": _like(state.exp_avg[n], p), "exp_avg_sq": _like(state.exp_avg_sq[n], p)}
                else:
                    self.optimizer.state.pop(p, None)
        self.steps_done = step
        self.scheduler.last_epoch = step
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(step, self.args)

    # -- conveniences for the loop and tests
    @property
    def lr(self) -> float:
        """The rate the next update uses (``lr_at(steps_done)``)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def eval_model(self) -> Any:
        """The unwrapped model (for evaluation on rank 0)."""
        return self.model



# ---------------------------------------------------------------------------------------------- processes
def visible_devices() -> int:
    """Devices ``--devices`` may ask for: the GPUs when CUDA is present, else one process per CPU core."""
    import os
    return torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)


def init_distributed() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the
    environment): NCCL with one GPU per local rank when CUDA is present, else gloo. Returns (rank, world);
    a plain process (no ``WORLD_SIZE``) stays single and gets (0, 1)."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return _dist()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _dist()


__all__ = ["Trainer", "LOSSES", "visible_devices", "init_distributed"]
