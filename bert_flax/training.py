"""Training in Flax/JAX: a ``jax.jit``-compiled AdamW step over a train state, on one device or a ``Mesh``.

The framework-free half (hyper-parameters, ``lr_at``, ``decays``, the loss reduction rule, the
canonical ``TrainState`` and the loop) is ``bert_common.training``; this module realises only the
``Trainer`` protocol with JAX's own tools:

- a ``flax.training.train_state.TrainState`` (fp32 master params, the optax state, the update count);
- ``optax.chain(clip_by_global_norm(max_grad_norm), adamw(schedule, b1, b2, eps, eps_root=0,
  weight_decay, mask))``. The clip is ``bert_common.training``'s rule ``g * min(1, max / (norm + 1e-6))``
  (torch's ``clip_grad_norm_``; optax's own ``clip_by_global_norm`` has no 1e-6), as a small optax
  transformation. optax applies the decay as ``-lr * (adam + wd * w)`` with the *old* ``w``,
  which is torch's ``w -= lr * wd * w`` followed by the Adam step (both read the pre-step weights). The
  Adam part is ``scale_by_adam`` below, not optax's: optax raises ``float32(b2)`` to the power ``t``, and
  ``1 - float32(0.999)`` is 1.29e-5 relative off ``1 - 0.999``, which put every update 6.4e-6 relative off
  torch's (and the TF trainer's) bias correction ``m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)``;
- the schedule is a table of ``lr_at(0..max_steps)`` (fp32) indexed by optax's update count, so it
  gives ``lr_at``'s values and nothing else;
- gradient accumulation is a ``jax.lax.scan`` over K micro-batches summing token-weighted gradients
  (each micro-batch contributes sum(its per-element losses) / the global count, the rule of
  ``bert_common.training``), so K micro-batches equal one batch;
- distribution is ``jax.sharding``: a ``Mesh`` of ``args.devices`` devices, the batch split along its
  first axis over every mesh axis; ``parallelism="data"`` replicates the state, ``"fsdp"`` also shards
  each parameter (and its two moments) along its largest dimension divisible by the ``fsdp`` axis.
  XLA inserts the collectives; the loss is that of the whole global batch, so N devices equal one;
- ``args.dtype == "bfloat16"``: the forward and backward run in bf16 (softmax, LayerNorm and the loss
  in fp32), parameters, gradients and moments stay fp32;
- dropout (``args.dropout``) draws from ``fold_in(fold_in(PRNGKey(seed), step), micro_batch)``, so a
  resumed run draws the same masks as an uninterrupted one;
- the MLM heads of ``bert_common.training.SPARSE_MLM`` (pretraining, masked LM) run on the labelled
  positions only: the host adds ``mlm_positions`` (B, P) (``with_mlm_positions``) to the placed batch, the
  Linen head gathers the last hidden states there before ``cls.predictions`` ((b, P, V) logits, not
  (b, S, V)) and the loss gathers ``labels`` the same way. The encoder, its dropout streams and the
  parameter tree are those of the full forward, so the update is the full-logits one up to the order of
  float additions. P is a power of two, so the step compiles once per (batch shape, P), a handful of times.

Shape legend: B global batch, K accumulation micro-batches, S sequence length, V vocab, L labels.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bert_common.config import BertConfig
from bert_common.semantics import IGNORE_INDEX, packed_rows, problem_type
from bert_common.training import (CLIP_EPS, MLM_POSITIONS, SPARSE_MLM, TrainingArguments, TrainState, decays,
                                  lr_at, with_mlm_positions)
from bert_common.validation import check_inputs
from bert_common.weights import canonical_shapes, scheme_path, to_scheme

SCHEME = "flax"
# Encoder inputs a batch may carry (the rest of the batch contract is labels).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


# ================================================================================================ losses
# Each head's loss as a sum of terms; a term is a per-element loss over counted elements, divided by the
# number of counted elements of the *global* batch (the loss reduction rule). Summed over micro-batches
# and devices this is exactly Hugging Face's loss of the whole batch (bert_flax.modeling computes the
# same losses as means; the Trainer needs the sums to weight shards).
def _ignoring(key: str):
    """Targets ``batch[key]`` (..., ) int; counted where != -100 (cross-entropy's ignore_index)."""
    def targets(batch, config):
        labels = batch[key]
        keep = labels != IGNORE_INDEX
        return jnp.where(keep, labels, 0), keep
    return targets


def _shifted(batch, config):
    """Causal LM: position t predicts label t + 1, so targets are labels[..., 1:] (..., S - 1)."""
    labels = batch["labels"][..., 1:]
    keep = labels != IGNORE_INDEX
    return jnp.where(keep, labels, 0), keep


def _span(key: str):
    """QA positions (B,) clamped to [0, S]; S (outside the text) is ignored, as in HF."""
    def targets(batch, config):
        S = batch["input_ids"].shape[-1]
        pos = jnp.clip(batch[key], 0, S)
        keep = pos != S
        return jnp.where(keep, pos, 0), keep
    return targets


def _sequence_targets(batch, config):
    """Sequence classification: (targets, counted) per ``semantics.problem_type``; labels (..., B) or (..., B, 1)
    for one label per row, (..., B, L) floats for multi-label / multi-output regression."""
    labels = batch["labels"]
    problem = problem_type(config, bool(jnp.issubdtype(labels.dtype, jnp.integer)))
    if problem == "single_label_classification":
        labels = labels.reshape(labels.shape[:-1]) if labels.ndim > 1 and labels.shape[-1] == 1 else labels
        return _ignoring("labels")({"labels": labels.astype(jnp.int32)}, config)
    if problem == "regression" and config.num_labels == 1:
        labels = labels.reshape(labels.shape[:-1]) if labels.ndim > 1 and labels.shape[-1] == 1 else labels
    labels = labels.astype(jnp.float32)
    return labels, jnp.ones(labels.shape, bool)   # MSE / BCE: a mean over every element


def _nll(logits, targets, config=None):
    """Cross-entropy per element: logits (..., C), targets (...) int -> (...) fp32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def _shifted_nll(logits, targets, config=None):
    return _nll(logits[:, :-1], targets)


def _sequence_loss(logits, targets, config):
    """Per element: CE (integer targets), squared error (regression) or binary CE (multi-label)."""
    x = logits.astype(jnp.float32)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return _nll(x.reshape(targets.shape + (config.num_labels,)), targets)
    if problem_type(config, False) == "regression":
        return (x.reshape(targets.shape) - targets) ** 2
    # multi-label: binary CE on logits in the stable form max(x, 0) - x*y + log(1 + exp(-|x|))
    return jnp.maximum(x, 0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x)))


@dataclasses.dataclass(frozen=True)
class LossTerm:
    output: str                                   # model output field with the logits
    label: str                                    # batch key the term needs
    targets: Callable                             # (batch, config) -> (targets, counted mask), same shape
    loss: Callable                                # (logits, targets, config) -> per-element loss, that shape
    classes: Callable[[BertConfig, Mapping], int] | None = None   # integer labels lie in [0, classes)
    weight: float = 1.0


_VOCAB = lambda c, b: c.vocab_size            # noqa: E731
_TWO = lambda c, b: 2                          # noqa: E731
_LABELS = lambda c, b: c.num_labels            # noqa: E731
_CHOICES = lambda c, b: int(np.shape(b["input_ids"])[1])   # noqa: E731
_CLASSES = lambda c, b: (c.num_labels if c.num_labels > 1                               # noqa: E731
                         and c.problem_type in (None, "single_label_classification") else None)

LOSS_TERMS: dict[str, tuple[LossTerm, ...]] = {
    "BertForPreTraining": (LossTerm("prediction_logits", "labels", _ignoring("labels"), _nll, _VOCAB),
                           LossTerm("seq_relationship_logits", "next_sentence_label",
                                    _ignoring("next_sentence_label"), _nll, _TWO)),
    "BertLMHeadModel": (LossTerm("logits", "labels", _shifted, _shifted_nll, _VOCAB),),
    "BertForMaskedLM": (LossTerm("logits", "labels", _ignoring("labels"), _nll, _VOCAB),),
    "BertForNextSentencePrediction": (LossTerm("logits", "labels", _ignoring("labels"), _nll, _TWO),),
    "BertForSequenceClassification": (LossTerm("logits", "labels", _sequence_targets, _sequence_loss, _CLASSES),),
    "BertForMultipleChoice": (LossTerm("logits", "labels", _ignoring("labels"), _nll, _CHOICES),),
    "BertForTokenClassification": (LossTerm("logits", "labels", _ignoring("labels"), _nll, _LABELS),),
    "BertForQuestionAnswering": (LossTerm("start_logits", "start_positions", _span("start_positions"), _nll,
                                          None, 0.5),
                                 LossTerm("end_logits", "end_positions", _span("end_positions"), _nll, None, 0.5)),
}


def loss_counts(model_class: str, config: BertConfig, batch: Mapping[str, Any]) -> list[jax.Array]:
    """Global denominators, one per loss term: counted elements of the whole batch (at least 1)."""
    return [jnp.maximum(jnp.sum(t.targets(batch, config)[1]), 1).astype(jnp.float32)
            for t in _terms(model_class, batch)]


def head_loss(model_class: str, config: BertConfig, outputs: Mapping[str, Any], batch: Mapping[str, Any],
              counts=None) -> jax.Array:
    """The training loss of ``batch`` from the model's ``outputs`` (logits), fp32 scalar.

    With ``counts`` (``loss_counts`` of the global batch) it is this shard's contribution,
    sum(per-element losses) / global count per term; without, the Hugging Face loss of ``batch`` itself.
    """
    terms = _terms(model_class, batch)
    counts = loss_counts(model_class, config, batch) if counts is None else counts
    total = jnp.zeros((), jnp.float32)
    for term, count in zip(terms, counts):
        targets, keep = term.targets(batch, config)
        losses = term.loss(outputs[term.output], targets, config).astype(jnp.float32)
        total = total + term.weight * jnp.sum(jnp.where(keep, losses, 0.0)) / count
    return total


def _terms(model_class: str, batch: Mapping[str, Any]) -> tuple[LossTerm, ...]:
    terms = LOSS_TERMS[model_class]
    if model_class == "BertForNextSentencePrediction" and "labels" not in batch and "next_sentence_label" in batch:
        # HF's NSP head takes either name for its labels
        terms = (dataclasses.replace(terms[0], label="next_sentence_label",
                                     targets=_ignoring("next_sentence_label")),)
    return terms


# ================================================================================================ names
def _flat(tree: Mapping) -> dict[str, Any]:
    """Params-like pytree -> {"bert/embeddings/word_embeddings/embedding": leaf} (the flax scheme)."""
    return traverse_util.flatten_dict(tree, sep="/")


def _nest(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _to_canonical(tree, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A pytree in the flax scheme (params or a moment) -> canonical fp32 NumPy, in canonical order."""
    flat = _flat(tree)
    out = {}
    for name in shapes:
        path, transpose = scheme_path(name, SCHEME)
        arr = _host(flat[path]).astype(np.float32)
        out[name] = np.ascontiguousarray(arr.T) if transpose else arr
    return out


def _host(x) -> np.ndarray:
    """A (possibly sharded) array as one NumPy array on this host; across processes (multi-host) the
    shards are all-gathered, so every process gets the whole value."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _place(value, sharding: NamedSharding) -> jax.Array:
    """A host value (the whole global array, as every process holds it) -> a global array laid out by
    ``sharding``; each process fills only its own devices' slices (single- and multi-host alike)."""
    arr = np.asarray(value)
    return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def _check_canonical(what: str, tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> None:
    missing = [n for n in shapes if n not in tensors]
    unexpected = [n for n in tensors if n not in shapes]
    wrong = [f"{n} {tuple(np.shape(tensors[n]))} (expected {tuple(shapes[n])})" for n in shapes
             if n in tensors and tuple(np.shape(tensors[n])) != tuple(shapes[n])]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(v)}): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
                 for label, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v]
        raise ValueError(f"TrainState.{what} does not match the model's parameters: " + "; ".join(parts))


def decay_mask(config: BertConfig, model_class: str, add_pooling_layer: bool | None = None) -> dict:
    """The optax ``mask`` pytree (flax scheme paths): True where ``bert_common.training.decays``."""
    return _nest({scheme_path(n, SCHEME)[0]: decays(n)
                  for n in canonical_shapes(config, model_class, add_pooling_layer)})


def schedule(args: TrainingArguments) -> Callable[[jax.Array], jax.Array]:
    """optax schedule: update count (int32 scalar) -> fp32 learning rate, = ``lr_at(count, args)``.

    A table of ``lr_at(0 .. max_steps)``; counts past ``max_steps`` read its last entry (``lr_at`` is 0
    there). 4 bytes per step (4 MB for BERT's 1M pretraining steps).
    """
    table = np.asarray([lr_at(s, args) for s in range(args.max_steps + 1)], np.float32)

    def lr(count):
        return jnp.asarray(table)[jnp.minimum(count, args.max_steps)]
    return lr


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale every gradient by ``min(1, max_norm / (global L2 norm + CLIP_EPS))`` (norm over all leaves),
    ``bert_common.training.clip_coefficient`` in-graph."""
    def update(updates, state, params=None):
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + CLIP_EPS))
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)



def scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` (``eps_root=0``, the same ``ScaleByAdamState``) with torch's bias correction:
    ``m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)``, ``1 - b^t`` computed in fp32 as ``-expm1(t · log b)``
    with ``log b`` taken from the float64 hyper-parameter (within ~1e-7 relative of torch's float64 value).

    Why not optax's own: it takes ``1 - float32(b)^t``, while the moment update uses ``1 - b`` from the
    float64 value; for b2 = 0.999 the two disagree by 1.29e-5 relative, and every update moves 6.4e-6
    relative off torch.optim.AdamW (the parity suite's AdamW check sees it on zero-initialised biases).
    """
    with np.errstate(divide="ignore"):  # b = 0: log b = -inf, and 1 - b^t = 1 as it should
        log_b1, log_b2 = np.float32(np.log(b1)), np.float32(np.log(b2))

    def init(params):
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                                      nu=optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        c1, c2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
        out = jax.tree_util.tree_map(lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps),
                                     mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
    return optax.GradientTransformation(init, update)


def adamw(learning_rate, b1: float, b2: float, eps: float, weight_decay: float, mask=None
          ) -> optax.GradientTransformation:
    """``optax.adamw`` (``eps_root=0``) with ``scale_by_adam``'s bias correction: the Adam direction, plus
    ``weight_decay · w`` where ``mask`` is True, times ``-learning_rate`` (a float or an optax schedule)."""
    return optax.chain(scale_by_adam(b1, b2, eps), optax.add_decayed_weights(weight_decay, mask),
                       optax.scale_by_learning_rate(learning_rate))

# ================================================================================================ sharding
def _fsdp_spec(shape: tuple[int, ...], size: int, axis: str) -> P:
    """Shard the largest dimension that ``size`` divides (first on ties); replicate when none does."""
    dims = [d for d in sorted(range(len(shape)), key=lambda d: (-shape[d], d)) if shape[d] % size == 0]
    if not dims or size == 1:
        return P()
    spec = [None] * len(shape)
    spec[dims[0]] = axis
    return P(*spec)


def make_mesh(devices: int, parallelism: str, mesh_shape: tuple[int, ...] | None = None) -> Mesh:
    """A ``Mesh`` over the first ``devices`` of ``jax.devices()``.

    ``data``: one axis ``("data",)``. ``fsdp``: axes ``("data", "fsdp")`` of ``mesh_shape`` (default
    ``(1, devices)``: every device holds 1/N of each weight); parameters are sharded on ``fsdp``, the
    batch on both axes.
    """
    available = jax.device_count()
    if devices > available:
        raise ValueError(f"--devices {devices} is larger than the {available} device(s) JAX sees "
                         f"(jax.devices(): {jax.devices()[0].platform}); use --devices <= {available}")
    if parallelism == "data":
        names, shape = ("data",), (devices,)
        if mesh_shape is not None and tuple(mesh_shape) != shape:
            raise ValueError(f"mesh_shape {tuple(mesh_shape)} does not fit parallelism='data' over {devices} devices")
    elif parallelism == "fsdp":
        names, shape = ("data", "fsdp"), tuple(mesh_shape) if mesh_shape is not None else (1, devices)
        if len(shape) != 2 or math.prod(shape) != devices:
            raise ValueError(f"mesh_shape {shape} must be (data, fsdp) with data * fsdp = --devices {devices}")
    else:
        raise ValueError(f"parallelism must be 'data' or 'fsdp', got {parallelism!r}")
    return Mesh(np.asarray(jax.devices()[:devices]).reshape(shape), names)


# ================================================================================================ trainer
class Trainer:
    """``bert_common.training.Trainer`` for ``bert_flax`` models (see the module docstring).

    ``Trainer(model, args, *, mesh_shape=None, compiler_options=None)``: ``model`` is a ``bert_flax``
    head with a loss (its ``params`` are copied, never donated); ``mesh_shape`` picks the (data, fsdp)
    split for ``parallelism="fsdp"``; ``compiler_options`` go to XLA for the step's jit.

    ``step(batch)`` takes the batch contract (NumPy, global batch B = rows of every device and micro-batch)
    or the output of ``shard(batch)``; it returns the loss of the whole batch (Hugging Face's, before the
    update) as a Python float. ``trace_count`` counts compilations of the step (one per batch shape, and
    for ``SPARSE_MLM`` heads per number P of gathered MLM positions too).
    """

    def __init__(self, model, args: TrainingArguments, *, mesh_shape: tuple[int, ...] | None = None,
                 compiler_options: Mapping[str, Any] | None = None):
        if model.model_class not in LOSS_TERMS:
            raise ValueError(f"model {type(model).__name__} has no loss to train; use one of {sorted(LOSS_TERMS)}")
        self.args = args
        self.config: BertConfig = model.config
        self.model_class = model.model_class
        # The MLM output field computed at labelled positions only, or None; read once: one Trainer, one path.
        self.sparse_field = SPARSE_MLM.get(self.model_class)
        self.add_pooling_layer = model.add_pooling_layer
        self._model = model
        self.mesh = make_mesh(args.devices, args.parallelism, mesh_shape)
        self.rank = jax.process_index()   # the loop writes files on process 0 only (multi-host)
        self.trace_count = 0
        self.shapes = canonical_shapes(self.config, self.model_class, self.add_pooling_layer)

        master = jnp.dtype(jnp.float32)
        compute = jnp.dtype({"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype])
        # The twin that runs the forward: compute dtype per args.dtype, parameters read as the fp32 master
        # copy (Flax's Dense/Embed cast them to the compute dtype inside, so gradients come back in fp32).
        self._compute = type(model)(self.config, add_pooling_layer=self.add_pooling_layer, dtype=compute,
                                    param_dtype=master, params=model.params)
        clip = clip_by_global_norm(args.max_grad_norm) if args.max_grad_norm is not None else optax.identity()
        self.schedule = schedule(args)
        self.tx = optax.chain(clip, adamw(
            self.schedule, b1=args.adam_beta1, b2=args.adam_beta2, eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
            mask=decay_mask(self.config, self.model_class, self.add_pooling_layer)))

        # Host copies: placing them makes fresh buffers, so donating the state never frees model.params.
        params = jax.tree_util.tree_map(lambda a: _host(a).astype(master), model.params)
        state = train_state.TrainState.create(apply_fn=self._compute.apply, params=params, tx=self.tx)
        state = state.replace(step=jnp.zeros((), jnp.int32))
        self._state_sharding = jax.tree_util.tree_map(self._leaf_sharding, state)
        self.state = jax.tree_util.tree_map(_place, state, self._state_sharding)
        self._batch_sharding = NamedSharding(self.mesh, P(None, self.mesh.axis_names))   # (K, B/K, ...)
        self._param_sharding = self._state_sharding.params
        self._step = jax.jit(self._train_step, in_shardings=(self._state_sharding, self._batch_sharding),
                             out_shardings=(self._state_sharding, NamedSharding(self.mesh, P())),
                             donate_argnums=(0,),
                             compiler_options=dict(compiler_options) if compiler_options else None)

    # ---------------------------------------------------------------- placement
    def _leaf_sharding(self, leaf) -> NamedSharding:
        shape = tuple(np.shape(leaf))
        if self.args.parallelism == "fsdp" and len(shape) >= 1:
            return NamedSharding(self.mesh, _fsdp_spec(shape, self.mesh.shape["fsdp"], "fsdp"))
        return NamedSharding(self.mesh, P())

    def shard(self, batch: Mapping[str, Any]) -> "ShardedBatch":
        """Validate a NumPy batch and place it on the mesh as K micro-batches (K, B/K, ...), each split
        over every device along its rows. ``step`` does this itself; call it ahead (``prefetch``) to
        overlap the transfer with the previous step."""
        if isinstance(batch, ShardedBatch):
            return batch
        arrays = self._check_batch(batch)
        K = self.args.gradient_accumulation_steps
        placed = {k: _place(v.reshape((K, v.shape[0] // K) + v.shape[1:]), self._batch_sharding)
                  for k, v in arrays.items()}
        return ShardedBatch(placed, rows=int(np.shape(batch["input_ids"])[0]))

    def _check_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The batch contract, checked on the host (ValueError naming the key); returns the arrays used."""
        if "input_ids" not in batch:
            raise ValueError("batch has no 'input_ids' (the Flax trainer needs token ids)")
        terms = _terms(self.model_class, batch)
        missing = [t.label for t in terms if t.label not in batch]
        if missing:
            raise ValueError(f"{self.model_class} trains on {[t.label for t in terms]}; the batch lacks {missing}")
        ids = np.asarray(batch["input_ids"])
        rows, K, N = ids.shape[0], self.args.gradient_accumulation_steps, self.args.devices
        if rows != self.args.batch_size:
            raise ValueError(f"batch has {rows} rows but --batch-size is {self.args.batch_size}")
        if rows % (K * N):
            raise ValueError(f"batch of {rows} rows does not divide over --devices {N} x "
                             f"gradient_accumulation_steps {K} = {K * N} (set --batch-size to a multiple of {K * N})")
        check_inputs(self.config, input_ids=ids, token_type_ids=batch.get("token_type_ids"),
                     position_ids=batch.get("position_ids"), attention_mask=batch.get("attention_mask"),
                     packed=packed_rows(self.config, batch.get("position_ids")))
        out = {}
        for k in MODEL_INPUTS:
            if batch.get(k) is not None:
                out[k] = np.asarray(batch[k], np.int32)
        for t in terms:
            labels = np.asarray(batch[t.label])
            if labels.shape[0] != rows:
                raise ValueError(f"batch['{t.label}'] has {labels.shape[0]} rows, input_ids has {rows}")
            if np.issubdtype(labels.dtype, np.integer):
                labels = labels.astype(np.int32)
                limit = t.classes(self.config, batch) if t.classes is not None else None
                bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= limit)) if limit else None
                if bad is not None and bad.any():
                    raise ValueError(f"batch['{t.label}'] holds {int(labels[bad][0])}, outside [0, {limit}) "
                                     f"(or {IGNORE_INDEX} = ignore)")
            else:
                labels = labels.astype(np.float32)
            out[t.label] = labels
        # (B, P) int32 positions of the labelled tokens for the sparse MLM head; placed like every array.
        return with_mlm_positions(out) if self.sparse_field is not None else out

    # ---------------------------------------------------------------- the step
    def _train_step(self, state: train_state.TrainState, batch: dict):
        """state, batch (K, B/K, ...) -> (new state, loss of the whole batch). Traced once per shape."""
        self.trace_count += 1   # Python side effect: runs at trace time only, so it counts compilations
        config, args = self.config, self.args
        # Global denominators (the loss reduction rule), from the whole batch before splitting it. With
        # sparse MLM these count the full (K, B/K, S) labels: the gathered ones hold each labelled token
        # exactly once, so the count is the same (the tests check it).
        counts = loss_counts(self.model_class, config, batch)
        inputs = [k for k in MODEL_INPUTS if k in batch]
        train = bool(args.dropout)
        step_key = jax.random.fold_in(jax.random.PRNGKey(args.seed), state.step)

        def micro_loss(params, micro, index):
            feed = {k: micro[k] for k in inputs}
            if MLM_POSITIONS in micro:
                # The head modules gather the last hidden states at these (b, P) positions before the MLM
                # head. ``_apply`` is ``apply`` below its keyword check, which (rightly) refuses this key
                # from users; under tracing with check="off" it checks shapes only.
                feed[MLM_POSITIONS] = micro[MLM_POSITIONS]
                micro = {**micro, "labels": jnp.take_along_axis(micro["labels"], micro[MLM_POSITIONS], axis=1)}
            dropout_rng = jax.random.fold_in(step_key, index) if train else None
            out = self._compute._apply(params, feed, train, dropout_rng, False, False, None, "off")
            return head_loss(self.model_class, config, out, micro, counts)

        def accumulate(carry, xs):
            grads, loss = carry
            index, micro = xs
            value, g = jax.value_and_grad(micro_loss)(state.params, micro, index)
            grads = jax.tree_util.tree_map(lambda a, b: a + b.astype(a.dtype), grads, g)
            grads = jax.lax.with_sharding_constraint(grads, self._param_sharding)
            return (grads, loss + value), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        K = args.gradient_accumulation_steps
        (grads, loss), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)),
                                        (jnp.arange(K, dtype=jnp.int32), batch))
        return state.apply_gradients(grads=grads), loss

    def step(self, batch: Mapping[str, Any]) -> float:
        """One optimizer update on a global batch (NumPy batch contract or ``shard(batch)``); returns its
        loss (computed with the weights before the update)."""
        sharded = self.shard(batch)
        self.state, loss = self._step(self.state, sharded.arrays)
        return float(_host(loss))

    # ---------------------------------------------------------------- state
    @property
    def step_count(self) -> int:
        return int(_host(self.state.step))

    def get_state(self) -> TrainState:
        """Canonical fp32 params, ``exp_avg`` (optax ``mu``), ``exp_avg_sq`` (``nu``) and the update count,
        gathered to the host."""
        opt = self.state.opt_state
        return TrainState(params=_to_canonical(self.state.params, self.shapes),
                          exp_avg=_to_canonical(optax.tree_utils.tree_get(opt, "mu"), self.shapes),
                          exp_avg_sq=_to_canonical(optax.tree_utils.tree_get(opt, "nu"), self.shapes),
                          step=int(_host(self.state.step)))

    def set_state(self, state: TrainState) -> None:
        """Restore weights, moments and update count (from any backend's ``get_state``)."""
        for what in ("params", "exp_avg", "exp_avg_sq"):
            _check_canonical(what, getattr(state, what), self.shapes)
        if not isinstance(state.step, (int, np.integer)) or state.step < 0:
            raise ValueError(f"TrainState.step must be a non-negative integer, got {state.step!r}")
        master = jax.tree_util.tree_leaves(self.state.params)[0].dtype

        def tree(tensors):
            return _nest({k: np.asarray(v, master) for k, v in to_scheme(tensors, SCHEME).items()})

        step = np.asarray(state.step, np.int32)
        opt = optax.tree_utils.tree_set(self.state.opt_state, mu=tree(state.exp_avg), nu=tree(state.exp_avg_sq),
                                        count=step)
        new = self.state.replace(params=tree(state.params), opt_state=opt, step=step)
        self.state = jax.tree_util.tree_map(_place, new, self._state_sharding)

    @property
    def lr(self) -> float:
        """The rate the next update uses (``lr_at(steps done)``), read from the optax schedule."""
        return float(self.schedule(self.step_count))

    def eval_model(self):
        """The model with the current weights (for evaluation)."""
        return self.model

    @property
    def model(self):
        """The wrapped model holding a copy of the current weights (in its own dtype)."""
        self._model.params = jax.tree_util.tree_map(
            lambda a: jnp.asarray(_host(a), self._model.param_dtype), self.state.params)
        return self._model


@dataclasses.dataclass
class ShardedBatch:
    """A batch already placed on the mesh: arrays (K, B/K, ...) split along B/K over every device."""
    arrays: dict[str, jax.Array]
    rows: int


# ================================================================================================ input
def dataset_batches(dataset, args: TrainingArguments, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Global NumPy batches of updates ``start_step .. args.max_steps - 1`` of ``dataset`` (anything with
    ``len`` and ``batch(indices, epoch)``, e.g. ``bert_common.pretraining.open_dataset``), in the shared
    loop's order (``bert_common.training.loop.batch_indices``: a function of (seed, step))."""
    from bert_common.training.loop import batch_indices
    for step in range(start_step, args.max_steps):
        epoch, indices = batch_indices(step, len(dataset), args.batch_size, args.seed)
        yield dataset.batch(indices, epoch=epoch)


def prefetch(batches: Iterable[Mapping[str, np.ndarray]], trainer: Trainer, size: int = 2) -> Iterator[ShardedBatch]:
    """Place NumPy batches on the trainer's mesh ``size`` steps ahead (JAX dispatch is asynchronous, so
    the transfer of batch t + 1 overlaps step t). Yields ``ShardedBatch`` for ``trainer.step``."""
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    queue: list[ShardedBatch] = []
    for batch in batches:
        queue.append(trainer.shard(batch))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue


__all__ = ["Trainer", "ShardedBatch", "LossTerm", "LOSS_TERMS", "head_loss", "loss_counts", "decay_mask", "schedule", "clip_by_global_norm", "scale_by_adam", "adamw", "make_mesh", "prefetch",
           "dataset_batches"]
