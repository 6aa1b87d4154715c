"""Training for bert_tf in Keras' idiom: ``compile`` with an AdamW, ``fit`` on a ``tf.data`` pipeline, or
``Trainer.step`` from the shared loop — both run the same compiled train step.

The framework-free half (hyper-parameters, ``lr_at``, ``decays``, the loss reduction rule, ``TrainState``,
the batch layout of ``split_batch``) lives in ``bert_common.training``; this module realises it with Keras:

- ``LinearWarmupDecay``: ``lr_at`` as a ``keras.optimizers.schedules.LearningRateSchedule`` (tabulated).
- ``AdamW``: a ``keras.optimizers.Optimizer`` with torch.optim.AdamW's update (bias correction applied to
  ``sqrt(v)`` before adding ``eps``; Keras' ``AdamW`` adds ``eps`` to the uncorrected ``sqrt(v)``, a
  different update whenever ``eps`` is not negligible), decoupled weight decay from Keras'
  ``exclude_from_weight_decay``, and global-norm clipping of the *summed* gradient under tf.distribute.
- ``Trainer(model, args)``: builds the optimizer, compiles ``model`` with it and installs the train step
  (token-weighted loss, gradient accumulation, dropout on/off, replicas, the MLM head of ``SPARSE_MLM``
  heads at the labelled positions only), so ``trainer.step(batch)`` and ``trainer.model.fit(to_dataset(...))``
  are one function.
- ``to_dataset``: the pretraining dataset (or any iterable of batch dicts) as a ``tf.data.Dataset``.
- ``make_strategy`` / ``use_cpu_devices``: ``MirroredStrategy`` over GPUs or logical CPUs,
  ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers.

Shapes follow the batch contract of ``bert_common.training``: B global batch, S sequence, V vocabulary.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bert_tf import modeling  # first: selects Keras' TensorFlow backend

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert_common.pretrained import canonical_from_backend  # noqa: E402
from bert_common.training import (CE_LOSS_TERMS, CLIP_EPS, MLM_POSITIONS, SPARSE_MLM, TrainingArguments,  # noqa: E402
                                  TrainState, decays, lr_at, split_batch, with_mlm_positions)
from bert_common.weights import canonical_shapes, scheme_path, to_scheme  # noqa: E402

SCHEME = "tf"
IGNORE_INDEX = -100

# args.dtype -> Keras dtype policy of the trained model: bf16 compute, fp32 variables (master weights).
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

LABEL_KEYS = ("labels", "next_sentence_label", "start_positions", "end_positions")


# ---------------------------------------------------------------------------------------------- schedule
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``bert_common.training.lr_at`` as a Keras schedule: update count (int) -> float32 rate.

    The rates of updates ``0..max_steps`` are tabulated from ``lr_at`` itself (the schedule is defined once)
    and looked up; counts past ``max_steps`` read its last entry, 0, as ``lr_at`` gives. Every value equals
    ``np.float32(lr_at(step, args))`` exactly. ``max_steps + 1`` floats (4 MB for a million updates).
    """

    def __init__(self, args: TrainingArguments):
        self.args = args
        self.table = np.asarray([lr_at(s, args) for s in range(args.max_steps + 1)], np.float32)

    @classmethod
    def from_args(cls, args: TrainingArguments) -> "LinearWarmupDecay":
        return cls(args)

    def __call__(self, step):
        index = tf.minimum(tf.cast(step, tf.int64), self.args.max_steps)
        return tf.gather(tf.constant(self.table), index)

    def get_config(self) -> dict[str, Any]:
        return {"args": self.args.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LinearWarmupDecay":
        return cls(TrainingArguments(**config["args"]))


# ---------------------------------------------------------------------------------------------- optimizer
def _sum_over_replicas(values):
    """All-reduce (sum) inside a replica context of several replicas; unchanged otherwise."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def _merge_call(fn, *args):
    """Run ``fn(strategy, *args)`` in cross-replica context (variables of every replica updated once)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return fn(tf.distribute.get_strategy(), *args)
    return ctx.merge_call(fn, args=args)


class AdamW(keras.optimizers.Optimizer):
    """torch.optim.AdamW's update as a Keras optimizer (fp32 state, moments as torch defines them).

    For a gradient ``g`` (summed over replicas, then clipped to global L2 norm ``global_clipnorm`` with
    torch's ``max_norm / (norm + 1e-6)``), rate ``lr_t`` (the schedule at ``iterations``, the updates done
    before this one) and ``t = iterations + 1``::

        w -= lr_t * weight_decay * w            (not for variables given to exclude_from_weight_decay)
        m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g^2
        w -= lr_t / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)

    Optimizer variables: ``momentums`` (m, torch's ``exp_avg``), ``velocities`` (v, ``exp_avg_sq``),
    ``iterations``. Keras' ``gradient_accumulation_steps`` and EMA are refused: the Trainer accumulates
    (token-weighted sums; Keras averages micro-batches and its schedule would read the micro-step count).
    """

    def __init__(self, learning_rate, weight_decay: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-6, global_clipnorm: float | None = 1.0, name: str = "adamw", **kwargs):
        for key in ("gradient_accumulation_steps", "use_ema", "clipnorm", "clipvalue", "loss_scale_factor"):
            if kwargs.get(key):
                raise ValueError(f"AdamW does not take {key}={kwargs[key]!r}: accumulation lives in the Trainer's "
                                 f"train step, clipping is global_clipnorm")
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, global_clipnorm=global_clipnorm,
                         name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    @classmethod
    def from_args(cls, args: TrainingArguments) -> "AdamW":
        """The optimizer of ``args`` (schedule ``lr_at``); the no-decay mask is set by ``exclude_no_decay``."""
        return cls(LinearWarmupDecay.from_args(args), weight_decay=args.weight_decay, beta_1=args.adam_beta1,
                   beta_2=args.adam_beta2, epsilon=args.adam_epsilon, global_clipnorm=args.max_grad_norm)

    def exclude_no_decay(self, model: modeling.BertPreTrainedModel) -> None:
        """Exclude ``model``'s variables whose canonical names ``decays`` rejects (biases, LayerNorm)."""
        names = canonical_names(model)
        self.exclude_from_weight_decay(var_list=[v for p, v in model.named_variables().items()
                                                 if not decays(names[p])])

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    @property
    def momentums(self) -> list:
        return self._momentums

    @property
    def velocities(self) -> list:
        return self._velocities

    def _backend_apply_gradients(self, grads, trainable_variables):
        # Keras clips each replica's gradient before tf.distribute sums them (and sums inside the update);
        # the update above clips the global gradient, so: sum once, clip, then update every copy.
        grads = _sum_over_replicas(list(grads))
        if self.global_clipnorm is not None:
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads]))
            coef = tf.minimum(1.0, self.global_clipnorm / (norm + CLIP_EPS))
            grads = [g * tf.cast(coef, g.dtype) for g in grads]
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        learning_rate = self.learning_rate

        def update(strategy, grads, lr):  # variables by closure: merge_call would turn them into tensors
            for g, var in zip(grads, variables):
                strategy.extended.update(var, lambda v, g_, lr_: self.update_step(g_, v, lr_), args=(g, lr),
                                         group=False)

        _merge_call(update, grads, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        i = self._get_variable_index(variable)
        m, v = self._momentums[i], self._velocities[i]
        # Scalars in float64 as torch computes them in Python, then one cast.
        t = tf.cast(self.iterations + 1, tf.float64)
        lr = tf.cast(learning_rate, tf.float64)
        step_size = tf.cast(lr / (1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), t)), dtype)
        bc2_sqrt = tf.cast(tf.sqrt(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t)), dtype)
        g = tf.cast(gradient, dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            self.assign(variable, variable * tf.cast(1.0 - lr * self.weight_decay, dtype))
        self.assign(m, m * self.beta_1 + g * (1.0 - self.beta_1))
        self.assign(v, v * self.beta_2 + tf.square(g) * (1.0 - self.beta_2))
        self.assign_sub(variable, step_size * m / (tf.sqrt(v) / bc2_sqrt + self.epsilon))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


# ---------------------------------------------------------------------------------------------- devices
def use_cpu_devices(n: int) -> None:
    """Split the host CPU into ``n`` logical devices (for MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its runtime (before any tensor or variable exists).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise ValueError(f"cannot split the CPU into {n} devices: TensorFlow is already initialised with "
                             f"{have}; call use_cpu_devices before creating any model or tensor") from err


def _tf_config_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


# One strategy per device set and process: TensorFlow's collective ops key their groups per process, so a
# second MirroredStrategy over a different device count in the same process fails in its first all-reduce.
_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def make_strategy(devices: int) -> tf.distribute.Strategy | None:
    """The data-parallel strategy for ``devices`` replicas (None for 1).

    ``TF_CONFIG`` naming more than one worker: ``MultiWorkerMirroredStrategy`` (create it at program start,
    before any model). Otherwise ``MirroredStrategy`` over the first ``devices`` GPUs, or logical CPUs
    when there is no GPU (``use_cpu_devices``). The replica count must equal ``devices``. Strategies are
    cached per device set; use one replica count per process.
    """
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    if _tf_config_workers() > 1:
        key = ("multi-worker",)
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
    elif devices == 1:
        return None
    else:
        gpus = tf.config.list_logical_devices("GPU")
        seen = gpus or tf.config.list_logical_devices("CPU")
        kind = "GPU" if gpus else "CPU"
        if len(seen) < devices:
            raise ValueError(f"devices={devices} but TensorFlow sees {len(seen)} {kind} device(s)"
                             + ("" if gpus else "; on CPU call bert_tf.training.use_cpu_devices(n) first"))
        key = tuple(d.name for d in seen[:devices])
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(key))
    strategy = _STRATEGIES[key]
    if strategy.num_replicas_in_sync != devices:
        raise ValueError(f"devices={devices} but the strategy has {strategy.num_replicas_in_sync} replicas")
    return strategy


# ---------------------------------------------------------------------------------------------- names
def canonical_names(model: modeling.BertPreTrainedModel) -> dict[str, str]:
    """``{tf scheme path: canonical name}`` for every variable of ``model``."""
    shapes = canonical_shapes(model.config, model.model_class, model.add_pooling_layer)
    return {scheme_path(name, SCHEME)[0]: name for name in shapes}


def _rebuild(model: modeling.BertPreTrainedModel, policy: str) -> modeling.BertPreTrainedModel:
    """A copy of ``model`` under dtype ``policy`` (and the current strategy scope), same canonical weights."""
    copy = type(model)(model.config, add_pooling_layer=model.add_pooling_layer, dtype=policy, _init=False)
    copy.load_canonical_state_dict(model.canonical_state_dict())
    return copy


# ---------------------------------------------------------------------------------------------- loss
# Each head's Hugging Face loss written as a shard's contribution: the sum of its per-token / per-row
# terms divided by the GLOBAL counts (``loss_normalizers``). Summed over shards (accumulation micro-batches,
# replicas) this is the HF loss of the whole global batch, the rule of ``bert_common.training``.
def _ce_sum(logits, labels, ignore_index=IGNORE_INDEX):
    """Sum of the cross-entropies over labels != ignore_index, fp32. logits (..., C), labels (...) int -> ()."""
    logits = tf.cast(logits, tf.float32)
    logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    keep = tf.not_equal(labels, ignore_index)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    return tf.reduce_sum(tf.where(keep, nll, 0.0))


def _sequence_classification(out, b, n, config):
    logits, labels = tf.cast(out["logits"], tf.float32), b["labels"]
    problem = config.problem_type
    if problem is None:  # HF's inference of the problem type, without mutating the config
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if labels.dtype.is_integer else "multi_label_classification")
    if problem == "single_label_classification":
        return _ce_sum(logits, labels) / n["rows"]
    per_row = float(config.num_labels)  # MSE / BCE are means over every (row, label) entry
    target = tf.reshape(tf.cast(labels, tf.float32), tf.shape(logits))
    if problem == "regression":
        return tf.reduce_sum(tf.square(logits - target)) / (n["rows"] * per_row)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    return tf.reduce_sum(bce) / (n["rows"] * per_row)


def _span(out, b, n, config):
    S = tf.shape(out["start_logits"])[1]  # positions clamped to [0, S]; S (outside the text) is ignored, as in HF
    start = tf.clip_by_value(tf.cast(b["start_positions"], tf.int32), 0, S)
    end = tf.clip_by_value(tf.cast(b["end_positions"], tf.int32), 0, S)
    return (_ce_sum(out["start_logits"], start, S) + _ce_sum(out["end_logits"], end, S)) / (2.0 * n["rows"])


def _ce_terms(terms):
    """A loss function summing ``CE_LOSS_TERMS`` rows: sum(CE over the shard) / global count each."""
    return lambda o, b, n, c: sum(_ce_sum(o[field], b[label]) / n[norm] for field, label, norm in terms)


# model class -> shard contribution (outputs, shard tensors, global counts, config) -> () fp32
LOSSES: dict[str, Callable[..., Any]] = {
    **{cls: _ce_terms(terms) for cls, terms in CE_LOSS_TERMS.items()},
    "BertForSequenceClassification": _sequence_classification,
    "BertForQuestionAnswering": _span,
}


def _global_counts(batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """``loss_normalizers`` in-graph, summed over replicas: labelled tokens (>= 1) and rows, float32."""
    rows = tf.cast(tf.shape(batch["input_ids"])[0], tf.float32)
    labels = batch.get("labels")
    if labels is not None and labels.shape.rank == 2:
        tokens = tf.reduce_sum(tf.cast(tf.not_equal(tf.cast(labels, tf.int32), IGNORE_INDEX), tf.float32))
    else:
        tokens = rows
    counts = _sum_over_replicas(tf.stack([tokens, rows]))
    return {"tokens": tf.maximum(counts[0], 1.0), "rows": counts[1]}


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """The ``bert_common.training.Trainer`` protocol for bert_tf, on Keras' own training machinery.

    ``Trainer(model, args)``: ``args.devices > 1`` builds a copy of ``model`` and the optimizer under
    ``strategy.scope()`` (``make_strategy``, or ``strategy=``); ``args.dtype="bfloat16"`` builds a copy
    under the ``mixed_bfloat16`` policy (bf16 compute, fp32 variables). ``trainer.model`` is the model
    being trained (``model`` itself when neither applies). The model is compiled with ``AdamW`` and
    gets the train step below, so ``trainer.model.fit(to_dataset(...))`` trains exactly as
    ``trainer.step`` does. ``jit_compile`` is passed to ``compile`` (XLA).

    Train step on a global batch of B rows: each of N replicas takes B/N rows, splits them into K =
    ``gradient_accumulation_steps`` micro-batches, and sums the gradients of
    ``sum(per-item losses) / global count`` (``LOSSES``; dropout per ``args.dropout``); the optimizer
    sums over replicas, clips, decays and updates. The returned loss is the global batch's HF loss.

    ``SPARSE_MLM`` heads (read when the Trainer is built): ``step`` adds ``mlm_positions`` (B, P) int32 to
    the batch (``bert_common.training.with_mlm_positions``), and the train step runs the MLM head on the
    (b, P, H) hidden states gathered at those positions only, against the labels gathered alike; batches
    without the key (e.g. ``fit`` on a pipeline that does not add it) take the full-logits path.
    """

    def __init__(self, model: modeling.BertPreTrainedModel, args: TrainingArguments, *,
                 strategy: tf.distribute.Strategy | None = None, jit_compile: bool = False):
        if not isinstance(model, modeling.BertPreTrainedModel):
            raise ValueError(f"model must be a bert_tf model, got {type(model).__name__}")
        if model.model_class not in LOSSES:
            raise ValueError(f"model of class {model.model_class} has no training loss here; trainable heads: "
                             f"{list(LOSSES)}")
        if not isinstance(args, TrainingArguments):
            raise ValueError(f"args must be a TrainingArguments, got {type(args).__name__}")
        self.args = args
        # The MLM output field computed at labelled positions only, or None; read once: one Trainer, one path.
        self.sparse_field = SPARSE_MLM.get(model.model_class)
        self.strategy = strategy if strategy is not None else make_strategy(args.devices)
        replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        if replicas != args.devices:
            raise ValueError(f"args.devices={args.devices} but the strategy has {replicas} replicas")
        self.replicas = replicas
        policy = POLICIES[args.dtype]
        scope = self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()
        with scope:
            if self.strategy is not None or model.dtype_policy.name != policy:
                model = _rebuild(model, policy)
            self.model = model
            named = model.named_variables()
            self._paths = list(named)
            self._variables = list(named.values())
            self.optimizer = AdamW.from_args(args)
            self.optimizer.exclude_no_decay(model)
            self.optimizer.build(self._variables)
            # Dropout masks keyed by (seed, update, micro-batch, replica), not by a generator's history, so a
            # resumed run draws the masks of an uninterrupted one (bert_common.training.dropout_seed's rule).
            self._dropouts = [layer for layer in model._flatten_layers(include_self=False)
                              if isinstance(layer, keras.layers.Dropout) and layer.rate > 0]
            model.compile(optimizer=self.optimizer, jit_compile=jit_compile)
        # Keras runs ``model.train_step`` in fit/train_on_batch; this one is the exact global-batch step.
        model.train_step = self._train_step
        model.make_train_function(force=True)

    # ---------------------------------------------------------------- the compiled step
    def _shard_loss(self, batch: Mapping[str, tf.Tensor], counts: Mapping[str, tf.Tensor]):
        """This shard's share of the global loss (``LOSSES``). () fp32."""
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS and k != MLM_POSITIONS}
        training = bool(self.args.dropout)
        if self.sparse_field is not None and MLM_POSITIONS in batch:
            out, batch = self._sparse_mlm(inputs, batch, training)
        else:
            out = self.model(inputs, training=training, return_dict=True)
        return LOSSES[self.model.model_class](out, batch, counts, self.model.config)

    def _sparse_mlm(self, inputs: Mapping[str, tf.Tensor], batch: Mapping[str, tf.Tensor], training: bool):
        """The head's outputs with the MLM logits at ``batch[MLM_POSITIONS]`` (b, P) int32 only: (b, P, V),
        and ``batch`` with ``labels`` gathered there, (b, P). The encoder and the head are the layers the
        model's own call runs, in the same order (the same variables; the same dropout layers, so the masks
        ``_key_dropout`` keys are the full path's); only the decoder rows of unlabelled tokens, whose loss
        terms are 0 anyway, are never computed. Static shapes (P is fixed per batch) for XLA."""
        m = self.model
        positions = batch[MLM_POSITIONS]
        out = m._bert(m._prepare(dict(inputs), {}), training)
        states = tf.gather(out["last_hidden_state"], positions, batch_dims=1)               # (b, P, H)
        fields = {self.sparse_field: m.cls.predictions(states, m._word_embeddings())}     # (b, P, V)
        if hasattr(m.cls, "seq_relationship"):  # pretraining: NSP on the pooled output, as the full call
            fields["seq_relationship_logits"] = m.cls.seq_relationship(out["pooler_output"])  # (b, 2)
        return fields, {**batch, "labels": tf.gather(batch["labels"], positions, batch_dims=1)}

    def _key_dropout(self, micro: int) -> list:
        """Assign every Dropout layer's seed state [key, layer index] for this update / micro-batch / replica."""
        if not (self.args.dropout and self._dropouts):
            return []
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int64)
        K, N = self.args.gradient_accumulation_steps, self.replicas
        update = tf.cast(self.optimizer.iterations, tf.int64)
        key = (tf.constant(self.args.seed, tf.int64) * 1_000_003 + update) * (K * N) + micro * N + replica
        ops = []
        for j, layer in enumerate(self._dropouts):
            state = layer.seed_generator.state
            ops.append(state.assign(tf.cast(tf.stack([key, tf.constant(j, tf.int64)]), state.dtype)))
        return ops

    def _train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        batch = dict(x)
        if y is not None:
            batch.update(dict(y) if isinstance(y, Mapping) else {"labels": y})
        batch = {k: tf.convert_to_tensor(v) for k, v in batch.items()}   # NumPy when run eagerly
        counts = _global_counts(batch)
        K = self.args.gradient_accumulation_steps
        pieces = {k: tf.split(v, K, axis=0) for k, v in batch.items()}
        total, acc = tf.constant(0.0, tf.float32), None
        for k in range(K):
            micro = {key: parts[k] for key, parts in pieces.items()}
            if acc is not None:  # one micro-batch's activations at a time
                with tf.control_dependencies(acc):
                    micro = {key: tf.identity(v) for key, v in micro.items()}
            with tf.control_dependencies(self._key_dropout(k)):
                micro = {key: tf.identity(v) for key, v in micro.items()}
            with tf.GradientTape() as tape:
                loss = self._shard_loss(micro, counts)
            grads = tape.gradient(loss, self._variables)
            # A variable the loss does not reach still steps (weight decay) with a zero gradient.
            grads = [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
                     for g, v in zip(grads, self._variables)]
            acc = grads if acc is None else [a + g for a, g in zip(acc, grads)]
            total = total + loss
        self.optimizer.apply(acc, self._variables)
        loss = _sum_over_replicas(total)
        # fit's logs show the epoch's running mean from Keras' loss tracker, as with Keras' own train step.
        tracker = getattr(self.model, "_loss_tracker", None)
        if tracker is not None:
            tracker.update_state(loss)
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces multi-worker outputs with strategy.reduce(MEAN, axis=0): it needs a batch axis.
            loss = loss[None]
        return {"loss": loss}

    # ---------------------------------------------------------------- protocol
    def _check_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "input_ids" not in batch:
            raise ValueError(f"batch needs input_ids, got keys {sorted(batch)}")
        per_update = self.replicas * self.args.gradient_accumulation_steps
        rows = int(np.shape(batch["input_ids"])[0])
        if rows != self.args.batch_size:
            raise ValueError(f"batch has {rows} rows but batch_size={self.args.batch_size}")
        if rows % per_update:
            raise ValueError(f"batch has {rows} rows, which does not split over devices ({self.replicas}) x "
                             f"gradient_accumulation_steps ({self.args.gradient_accumulation_steps})")
        out = {}
        for k, v in batch.items():
            a = np.asarray(v)
            out[k] = a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.float32)
        # Travels with the batch (rows split like every array) to _shard_loss; never a model input.
        return with_mlm_positions(out) if self.sparse_field is not None else out

    def _distribute(self, batch: dict[str, np.ndarray]):
        """Replica r's rows: its block of every micro-batch (``split_batch`` layout), concatenated."""
        K, N = self.args.gradient_accumulation_steps, self.replicas
        blocks = [split_batch(micro, N) for micro in split_batch(batch, K)]
        shards = [{k: np.concatenate([blocks[i][r][k] for i in range(K)]) for k in batch} for r in range(N)]

        def value_fn(ctx):
            return {k: tf.constant(v) for k, v in shards[ctx.replica_id_in_sync_group].items()}

        return self.strategy.experimental_distribute_values_from_function(value_fn)

    def step(self, batch: Mapping[str, np.ndarray]) -> float:
        """One update on a global batch (the batch contract); returns the batch's loss."""
        batch = self._check_batch(batch)
        if self.strategy is None:
            logs = self.model.train_on_batch(batch, return_dict=True)
        else:
            self.model.make_train_function()
            logs = self.model.train_function(iter([(self._distribute(batch),)]))
        return float(np.asarray(logs["loss"]).reshape(-1)[0])

    def _slot_arrays(self, slots) -> dict[str, np.ndarray]:
        tensors = {p: np.asarray(tf.convert_to_tensor(s.value), np.float32) for p, s in zip(self._paths, slots)}
        m = self.model
        return canonical_from_backend(tensors, m.config, m.model_class, SCHEME, m.add_pooling_layer)

    def get_state(self) -> TrainState:
        """Canonical fp32 weights, moments (``exp_avg`` = momentums, ``exp_avg_sq`` = velocities) and step."""
        return TrainState(params=self.model.canonical_state_dict(),
                          exp_avg=self._slot_arrays(self.optimizer.momentums),
                          exp_avg_sq=self._slot_arrays(self.optimizer.velocities),
                          step=int(np.asarray(self.optimizer.iterations)))

    def set_state(self, state: TrainState) -> None:
        """Restore weights, moments and step from any backend's ``get_state`` (strict: every name once)."""
        m = self.model
        expected = set(canonical_shapes(m.config, m.model_class, m.add_pooling_layer))
        for field in ("params", "exp_avg", "exp_avg_sq"):
            got = set(getattr(state, field))
            if got != expected:
                raise ValueError(f"state.{field} does not match {m.model_class}: missing "
                                 f"{sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]}")
        if not isinstance(state.step, (int, np.integer)) or state.step < 0:
            raise ValueError(f"state.step must be a non-negative integer, got {state.step!r}")
        m.load_canonical_state_dict(state.params)
        for field, slots in (("exp_avg", self.optimizer.momentums), ("exp_avg_sq", self.optimizer.velocities)):
            tensors = to_scheme(getattr(state, field), SCHEME)
            for path, slot in zip(self._paths, slots):
                value = np.asarray(tensors[path], np.float32)
                if tuple(value.shape) != tuple(slot.shape):
                    raise ValueError(f"state.{field} for {path} has shape {value.shape}, expected {tuple(slot.shape)}")
                slot.assign(value)
        self.optimizer.iterations.assign(int(state.step))


# ---------------------------------------------------------------------------------------------- tf.data
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Example indices of one epoch: a permutation keyed by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def _batches(source, batch_size: int | None, epochs: int, seed: int, shuffle: bool
             ) -> tuple[Callable[[], Iterable], int | None]:
    """A re-iterable generator factory over the batches of ``source``, and their number when known."""
    if hasattr(source, "batch") and hasattr(source, "__len__"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer for a dataset source, got {batch_size!r}")
        n = len(source)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")

        def gen():
            for epoch in range(epochs):
                order = epoch_order(n, seed, epoch, shuffle)
                for start in range(0, n - batch_size + 1, batch_size):   # full batches only
                    yield source.batch(order[start:start + batch_size], epoch=epoch)
        return gen, epochs * (n // batch_size)
    if callable(source):
        return source, None
    if isinstance(source, (list, tuple)):
        return (lambda: iter(source)), len(source)
    raise ValueError("source must be a dataset with len() and .batch(indices, epoch), a list of batch dicts, "
                     f"or a callable returning an iterator of them; got {type(source).__name__}")


def to_dataset(source, batch_size: int | None = None, *, epochs: int = 1, seed: int = 0,
               shuffle: bool = True, mlm_positions: bool = False) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batch-contract dicts (int32 ids, (B, S) / (B,)), for ``model.fit``.

    ``source``: a pretraining dataset (``bert_common.pretraining.open_dataset``: ``len`` and
    ``.batch(indices, epoch)``) read in ``batch_size`` rows per element, ``epochs`` passes in the order of
    ``epoch_order(seed, epoch)`` (a last partial batch is dropped); or a list of batch dicts; or a callable
    returning an iterator of batch dicts (read lazily, e.g. the shared loop's batch iterator; its length
    is unknown to Keras, so pass ``steps_per_epoch`` to ``fit``).
    Each element is one global batch, i.e. one update of ``Trainer``'s train step.

    ``mlm_positions=True`` adds ``MLM_POSITIONS`` (B, P) int32 to every element with 2-D ``labels``
    (``with_mlm_positions``), so a ``Trainer``'s compiled step runs the MLM head of a ``SPARSE_MLM`` model
    at the labelled positions only, as ``Trainer.step`` does. Only for ``trainer.model.fit``: a model
    compiled without a ``Trainer`` takes the dict as its inputs and refuses the key. P is declared
    unknown in the element spec, like the batch axis (P varies with the busiest row of each batch); under
    ``jit_compile`` Keras compiles its step per concrete shape, i.e. once per power of two seen.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    factory, count = _batches(source, batch_size, epochs, seed, shuffle)

    def prepared(batch):
        return with_mlm_positions(batch) if mlm_positions else batch

    first = next(iter(factory()), None)
    if first is None:
        raise ValueError("source yields no batch")
    first = prepared(first)

    def spec(value):
        a = np.asarray(value)
        dtype = tf.int32 if a.dtype.kind in "iu" else tf.float32
        return tf.TensorSpec((None,) + a.shape[1:], dtype)

    signature = {k: spec(v) for k, v in first.items()}
    if MLM_POSITIONS in signature:  # P (a power of two) follows each batch's busiest row
        signature[MLM_POSITIONS] = tf.TensorSpec((None, None), tf.int32)

    def gen():
        for batch in factory():
            yield {k: np.asarray(v).astype(signature[k].dtype.as_numpy_dtype) for k, v in prepared(batch).items()}

    ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
    if count is not None:
        # On a dataset of unknown length Keras 3.15's fit advanced the optimizer's update counter (and so
        # the schedule) once more per epoch than there were batches (4 batches -> 5); a known length avoids it.
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    return ds.prefetch(tf.data.AUTOTUNE)


__all__ = ["AdamW", "LinearWarmupDecay", "Trainer", "to_dataset", "epoch_order", "make_strategy",
           "use_cpu_devices", "canonical_names", "LOSSES", "POLICIES"]
