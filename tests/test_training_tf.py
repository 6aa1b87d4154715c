"""bert_tf.training: the Keras AdamW against the update formula of bert_common.training, the schedule, the
no-decay mask, accumulation, state round trips, fit on tf.data, bf16, and N replicas = 1 device.

Budget (fp32). The conformance row for one AdamW step on CPU fp32 is an absolute 1e-5 on the parameters
(``conformance.tolerances``); a run that differs only in summation order (accumulation micro-batches,
replicas) may drift by at most that per update, so after ``k`` updates weights must agree to ``k * 1e-5``
and each step's loss to 1e-5 relative. Measured differences are far below (see the assertions' messages).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras")

import bert_tf  # noqa: E402
from bert_common.config import BertConfig  # noqa: E402
from bert_common.training import (MLM_POSITIONS, SPARSE_MLM, TrainingArguments, TrainState, decays, lr_at,  # noqa: E402
                                  mlm_slots)
from bert_common.training.loop import batch_indices  # noqa: E402
from bert_common.training.synthetic import SyntheticPretrainingDataset  # noqa: E402
from bert_tf.training import AdamW, LinearWarmupDecay, Trainer, canonical_names, to_dataset  # noqa: E402
from conformance.tolerances import tolerance  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_TOL = tolerance("float32", "cpu").step.abs        # per-update budget on the parameters
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64)
DATA = SyntheticPretrainingDataset(99, n=64, seq_len=16)


def config(**kw) -> BertConfig:
    return BertConfig(**{**TINY, **kw})


def args(**kw) -> TrainingArguments:
    base = dict(learning_rate=1e-3, max_steps=10, batch_size=8, warmup_steps=2, dropout=False)
    return TrainingArguments(**{**base, **kw})


def batch(step: int, B: int = 8) -> dict:
    return DATA.batch(batch_indices(step, len(DATA), B, 0)[1])


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ---------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("kw", [dict(warmup_steps=3, max_steps=12),
                                dict(warmup_steps=None, warmup_ratio=0.1, max_steps=25),
                                dict(warmup_steps=0, max_steps=7, learning_rate=2e-5)])
def test_schedule_equals_lr_at(kw):
    a = args(**kw)
    schedule = LinearWarmupDecay.from_args(a)
    for step in range(a.max_steps + 3):
        assert float(schedule(step)) == float(np.float32(lr_at(step, a))), step
    assert float(tf.function(schedule)(tf.constant(a.max_steps // 2, tf.int64))) == float(
        np.float32(lr_at(a.max_steps // 2, a)))


# ---------------------------------------------------------------------------------------------- optimizer
def numpy_adamw(w, g, m, v, step, a: TrainingArguments, decay: bool):
    """The update of bert_common.training's brief, float64, on one tensor (g already clipped)."""
    lr = lr_at(step, a)
    t = step + 1
    if decay:
        w = w - lr * a.weight_decay * w
    m = a.adam_beta1 * m + (1 - a.adam_beta1) * g
    v = a.adam_beta2 * v + (1 - a.adam_beta2) * g * g
    w = w - lr * (m / (1 - a.adam_beta1 ** t)) / (np.sqrt(v / (1 - a.adam_beta2 ** t)) + a.adam_epsilon)
    return w, m, v


def test_adamw_equals_formula_from_the_same_gradients():
    """Three updates from fixed gradients (clipping active on two): weights and moments vs float64 NumPy."""
    a = args(max_grad_norm=0.5, warmup_steps=1, max_steps=4, weight_decay=0.1)
    model = bert_tf.BertForMaskedLM(config(), seed=1)
    names = canonical_names(model)
    named = model.named_variables()
    opt = AdamW.from_args(a)
    opt.exclude_no_decay(model)
    opt.build(list(named.values()))
    rng = np.random.default_rng(0)
    w = {p: np.asarray(v.numpy(), np.float64) for p, v in named.items()}
    m = {p: np.zeros_like(x) for p, x in w.items()}
    s = {p: np.zeros_like(x) for p, x in w.items()}
    for step, scale in enumerate((1e-2, 1e-1, 1e-4)):
        grads = {p: (rng.standard_normal(x.shape) * scale).astype(np.float32) for p, x in w.items()}
        grads["bert/embeddings/token_type_embeddings/embeddings"][:] = 0.0  # no gradient: still decays
        norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
        coef = min(1.0, a.max_grad_norm / (norm + 1e-6))
        assert (coef < 1.0) == (step < 2)
        opt.apply([tf.constant(grads[p]) for p in named], list(named.values()))
        for p in named:
            w[p], m[p], s[p] = numpy_adamw(w[p], grads[p] * coef, m[p], s[p], step, a, decays(names[p]))
        for p, var in named.items():
            # fp32 rounding: a few ulp of the weight plus a few ulp of this update's size (<= lr).
            np.testing.assert_allclose(var.numpy(), w[p], rtol=4e-7, atol=4e-7 * a.learning_rate, err_msg=p)
        i = list(named).index("bert/embeddings/LayerNorm/gamma")
        # The clip factor holds the fp32 rounding of a global norm over every entry (~1e-6 relative).
        np.testing.assert_allclose(opt.momentums[i].numpy(), m["bert/embeddings/LayerNorm/gamma"], rtol=1e-5)
    assert int(opt.iterations) == 3


def test_no_decay_mask_is_biases_and_layernorm():
    """With zero gradients only weight decay moves weights: decayed tensors shrink by (1 - lr*wd)."""
    a = args(warmup_steps=0, max_steps=2, weight_decay=0.5)
    model = bert_tf.BertForPreTraining(config(), seed=2)
    state = {k: v + 0.5 for k, v in model.canonical_state_dict().items()}  # nonzero biases, LayerNorm != 1
    model.load_canonical_state_dict(state)
    named = model.named_variables()
    opt = AdamW.from_args(a)
    opt.exclude_no_decay(model)
    opt.apply([tf.zeros(v.shape) for v in named.values()], list(named.values()))
    after = model.canonical_state_dict()
    shrink = np.float32(1 - lr_at(0, a) * a.weight_decay)
    decayed = sorted(k for k in after if not np.array_equal(after[k], state[k]))
    assert decayed == sorted(k for k in state if decays(k))
    assert all(".LayerNorm." not in k and not k.endswith(".bias") for k in decayed)
    for k in decayed:
        np.testing.assert_allclose(after[k], state[k] * shrink, rtol=2e-7, err_msg=k)


def test_adamw_refuses_keras_accumulation():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        AdamW(1e-3, gradient_accumulation_steps=2)


# ---------------------------------------------------------------------------------------------- trainer
def tape_grads(model, b):
    """HF loss and canonical gradients of ``b`` (eager GradientTape, dropout off)."""
    from bert_common.pretrained import canonical_from_backend
    named = model.named_variables()
    with tf.GradientTape() as tape:
        loss = model(b, training=False).loss
    grads = tape.gradient(loss, list(named.values()))
    tensors = {p: np.asarray(tf.convert_to_tensor(g)) for p, g in zip(named, grads)}
    return float(loss), canonical_from_backend(tensors, model.config, model.model_class, "tf", model.add_pooling_layer)


def test_trainer_step_is_the_formula_on_the_models_gradients():
    """Two Trainer.step updates equal the NumPy update applied to GradientTape gradients of HF's loss."""
    a = args(warmup_steps=0, max_steps=5, max_grad_norm=1.0)
    trainer = Trainer(bert_tf.BertForPreTraining(config(), seed=3), a)
    state = trainer.get_state()
    w = {k: x.astype(np.float64) for k, x in state.params.items()}
    m = {k: np.zeros_like(x) for k, x in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for step in range(2):
        b = batch(step)
        ref_loss, grads = tape_grads(trainer.model, b)
        norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
        coef = min(1.0, a.max_grad_norm / (norm + 1e-6))
        loss = trainer.step(b)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
        for k in w:
            w[k], m[k], v[k] = numpy_adamw(w[k], grads[k] * coef, m[k], v[k], step, a, decays(k))
        got = trainer.get_state()
        assert got.step == step + 1
        assert max_diff(got.params, {k: x.astype(np.float32) for k, x in w.items()}) <= STEP_TOL
        assert max_diff(got.exp_avg, {k: x.astype(np.float32) for k, x in m.items()}) <= STEP_TOL * 1e-2


def test_accumulation_equals_one_big_batch():
    """K = 4 micro-batches of 2 rows (token-weighted) give the updates of one batch of 8: loss and weights."""
    runs = {}
    for K in (1, 4):
        trainer = Trainer(bert_tf.BertForPreTraining(config(), seed=4), args(gradient_accumulation_steps=K))
        runs[K] = ([trainer.step(batch(s)) for s in range(3)], trainer.get_state())
    for K in (4,):
        np.testing.assert_allclose(runs[K][0], runs[1][0], rtol=1e-5)
        assert max_diff(runs[K][1].params, runs[1][1].params) <= 3 * STEP_TOL


def test_state_round_trip_continues_identically_with_dropout():
    """get_state -> set_state into a fresh Trainer (other init) continues on the same losses, dropout on."""
    a = args(dropout=True, max_steps=6)
    straight = Trainer(bert_tf.BertForPreTraining(config(num_hidden_layers=1), seed=5), a)
    for s in range(2):
        straight.step(batch(s))
    state = straight.get_state()
    resumed = Trainer(bert_tf.BertForPreTraining(config(num_hidden_layers=1), seed=6), a)
    resumed.set_state(TrainState(params=dict(state.params), exp_avg=dict(state.exp_avg),
                                 exp_avg_sq=dict(state.exp_avg_sq), step=state.step))
    again = resumed.get_state()
    assert again.step == 2 and max_diff(again.exp_avg_sq, state.exp_avg_sq) == 0.0
    assert max_diff(again.params, state.params) == 0.0
    for s in range(2, 4):
        assert resumed.step(batch(s)) == straight.step(batch(s))
    assert max_diff(resumed.get_state().params, straight.get_state().params) == 0.0
    with pytest.raises(ValueError, match="state.exp_avg"):
        resumed.set_state(TrainState(state.params, {}, state.exp_avg_sq, 2))


def test_trainer_refuses_bad_batches_and_models():
    trainer_args = args(gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="no training loss"):
        Trainer(bert_tf.BertModel(config()), trainer_args)
    with pytest.raises(ValueError, match="devices=2"):
        Trainer(bert_tf.BertForMaskedLM(config()), args(devices=2))


@pytest.mark.slow
def test_fit_on_tf_data_matches_trainer_and_learns():
    """model.fit on a tf.data pipeline: plain Keras (compile with AdamW, the model's own loss) and the
    Trainer's compiled step give the same weights on one device, and the loss falls over 6 epochs."""
    a = args(max_steps=12, warmup_steps=2, learning_rate=3e-3)
    small = SyntheticPretrainingDataset(99, n=16, seq_len=16, seed=1)
    tiny = dict(num_hidden_layers=1)
    plain = bert_tf.BertForPreTraining(config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **tiny),
                                       seed=7)
    opt = AdamW.from_args(a)
    opt.exclude_no_decay(plain)
    plain.compile(optimizer=opt)
    plain_history = plain.fit(to_dataset(small, 8, seed=0), epochs=6, verbose=0).history["loss"]
    trainer = Trainer(bert_tf.BertForPreTraining(config(**tiny), seed=7), a)
    history = trainer.model.fit(to_dataset(small, 8, seed=0), epochs=6, verbose=0).history["loss"]
    assert int(trainer.optimizer.iterations) == 12 and int(opt.iterations) == 12
    assert max_diff(plain.canonical_state_dict(), trainer.get_state().params) <= 12 * STEP_TOL
    # Epoch means of the running loss (Keras' tracker) over 12 updates: measured 5.31 -> 4.52.
    assert plain_history[-1] < 0.9 * plain_history[0] and history[-1] < 0.9 * history[0]


# ---------------------------------------------------------------------------------------------- sparse MLM head
# Sparse (MLM head on the gathered labelled positions) vs full logits: the same layers and dropout masks on the
# same numbers; what changes is the number of rows the head's matmuls see (their blocking, so ulp-level
# rounding), the order of the CE sum, and the decoder's gradient summed over P instead of S rows. Measured
# on these runs: losses within 2.1e-7 relative, weights within 3.4e-8 after 2 updates. The bounds, 1e-6
# relative on each loss and 1e-6 on the weights (a tenth of the per-update budget STEP_TOL for a change of
# summation order), still fail on any real difference: a wrong position, label or dropout mask moves the
# loss by >1e-3 and the weights by a sizeable fraction of lr = 1e-3.
SPARSE_TOL = 1e-6


def spy_sparse(trainer) -> list:
    """Record the (static) shapes of the MLM logits the sparse path builds when the step is traced."""
    shapes, inner = [], trainer._sparse_mlm

    def wrapped(*a, **kw):
        fields, b = inner(*a, **kw)
        shapes.append(tuple(fields[SPARSE_MLM[trainer.model.model_class]].shape))
        return fields, b
    trainer._sparse_mlm = wrapped
    return shapes


def mlm_batch(model_class: str, step: int) -> dict:
    b = batch(step)
    return b if model_class == "BertForPreTraining" else {k: v for k, v in b.items() if k != "next_sentence_label"}


@pytest.mark.parametrize("model_class", sorted(SPARSE_MLM))
@pytest.mark.parametrize("dropout", [False, True])
def test_sparse_mlm_head_equals_full_logits(model_class, dropout, monkeypatch):
    """Trainer.step runs the MLM head on the labelled positions only (B x P rows, P = mlm_slots of the
    busiest row) and gives the full-logits path's losses and weights over 2 updates, dropout off and on
    (on: with 2 micro-batches, so the positions split with the rows and each micro-batch keys its masks)."""
    a = args(dropout=dropout, gradient_accumulation_steps=2 if dropout else 1)
    cfg = config(num_hidden_layers=1)
    runs = {}
    for sparse in (True, False):
        monkeypatch.setattr("bert_tf.training.SPARSE_MLM", SPARSE_MLM if sparse else {})  # read at construction
        trainer = Trainer(getattr(bert_tf, model_class)(cfg, seed=11), a)
        shapes = spy_sparse(trainer)
        losses = [trainer.step(mlm_batch(model_class, s)) for s in range(2)]
        runs[sparse] = losses, trainer.get_state().params, shapes
        if sparse:
            labels = mlm_batch(model_class, 0)["labels"]
            P = mlm_slots(int((labels != -100).sum(1).max()), labels.shape[1])
            assert P < labels.shape[1]  # the test would not tell the paths apart otherwise
            assert trainer._check_batch(mlm_batch(model_class, 0))[MLM_POSITIONS].shape == (8, P)
            assert shapes and all(sh == (8 // a.gradient_accumulation_steps, P, cfg.vocab_size) for sh in shapes)
        else:
            assert shapes == [] and MLM_POSITIONS not in trainer._check_batch(mlm_batch(model_class, 0))
    (sparse_losses, sparse_params, _), (full_losses, full_params, _) = runs[True], runs[False]
    np.testing.assert_allclose(sparse_losses, full_losses, rtol=SPARSE_TOL)
    assert max_diff(sparse_params, full_params) <= SPARSE_TOL


def test_fit_with_mlm_positions_is_trainer_step():
    """to_dataset(mlm_positions=True): fit's compiled step takes the sparse path too (P unknown in the spec)
    and makes the updates Trainer.step makes on the same batches."""
    a = args()
    cfg = config(num_hidden_layers=1)
    batches = [batch(s) for s in range(2)]
    ds = to_dataset(batches, mlm_positions=True)
    assert ds.element_spec[MLM_POSITIONS].shape.as_list() == [None, None]
    fitted = Trainer(bert_tf.BertForMaskedLM(cfg, seed=12), a)
    shapes = spy_sparse(fitted)
    fitted.model.fit(to_dataset([{k: v for k, v in b.items() if k != "next_sentence_label"} for b in batches],
                                mlm_positions=True), epochs=1, verbose=0)
    assert shapes and set(shapes) == {(None, None, cfg.vocab_size)}  # traced on the spec: (b, P, V), P per batch
    stepped = Trainer(bert_tf.BertForMaskedLM(cfg, seed=12), a)
    for b in batches:
        stepped.step({k: v for k, v in b.items() if k != "next_sentence_label"})
    assert int(fitted.optimizer.iterations) == 2
    assert max_diff(fitted.get_state().params, stepped.get_state().params) <= SPARSE_TOL


def test_bfloat16_mixed_precision_trains_with_fp32_master_weights():
    a = args(dtype="bfloat16", learning_rate=3e-3)
    model = bert_tf.BertForPreTraining(config(num_hidden_layers=1), seed=8)
    trainer = Trainer(model, a)
    assert trainer.model is not model and trainer.model.dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in trainer.model.named_variables().values())
    ref, _ = tape_grads(model, batch(0))
    losses = [trainer.step(batch(s % 2)) for s in range(6)]
    assert abs(losses[0] - ref) <= 6e-2 * abs(ref)          # the bf16 outputs row of the conformance table
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------- replicas
REPLICA_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import bert_tf.training as T
    T.use_cpu_devices(2)
    import bert_tf
    from bert_common.config import BertConfig
    from bert_common.training import TrainingArguments
    from bert_common.training.loop import batch_indices
    from bert_common.training.synthetic import SyntheticPretrainingDataset
    cfg = BertConfig(**json.loads(sys.argv[1]))
    data = SyntheticPretrainingDataset(99, n=64, seq_len=16)
    out = {}
    for devices, K in json.loads(sys.argv[2]):
        a = TrainingArguments(learning_rate=1e-3, max_steps=10, batch_size=8, warmup_steps=2, dropout=False,
                              devices=devices, gradient_accumulation_steps=K)
        trainer = T.Trainer(bert_tf.BertForPreTraining(cfg, seed=9), a)
        losses = [trainer.step(data.batch(batch_indices(s, 64, 8, 0)[1])) for s in range(10)]
        params = trainer.get_state().params
        np.savez(sys.argv[3] + f"/{devices}x{K}.npz", **params)
        out[f"{devices}x{K}"] = losses
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_replicas_equal_one_device(tmp_path):
    """MirroredStrategy on 2 logical CPUs (also with 2 micro-batches each), global batch 8, 10 updates: the
    loss of every step and the final weights equal one device's within the fp32 budget. (4 replicas pass
    too, run by hand: TensorFlow allows one replica count per process, and another process costs a
    minute of CI here.)"""
    runs = [[1, 1], [2, 1], [2, 2]]
    proc = subprocess.run([sys.executable, "-c", REPLICA_SCRIPT, __import__("json").dumps(TINY),
                           __import__("json").dumps(runs), str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    ref = np.load(tmp_path / "1x1.npz")
    for name in ("2x1", "2x2"):
        np.testing.assert_allclose(losses[name], losses["1x1"], rtol=1e-5, err_msg=name)
        got = np.load(tmp_path / f"{name}.npz")
        assert max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref.files) <= 10 * STEP_TOL, name


# ---------------------------------------------------------------------------------------------- vs torch
@pytest.mark.slow
def test_tf_trainer_equals_torch_trainer():
    """The same run (init, batches, dropout off, clipping active) in bert_tf and bert_torch: 10 updates."""
    pytest.importorskip("torch")
    torch_training = pytest.importorskip("bert_torch.training")
    import bert_torch
    a = args(max_grad_norm=0.5)
    tf_trainer = Trainer(bert_tf.BertForPreTraining(config(), seed=10), a)
    pt_trainer = torch_training.Trainer(bert_torch.BertForPreTraining(config(), seed=10), a)
    assert max_diff(tf_trainer.get_state().params, pt_trainer.get_state().params) == 0.0
    for s in range(10):
        b = batch(s)
        tf_loss, pt_loss = tf_trainer.step(b), pt_trainer.step(b)
        assert abs(tf_loss - pt_loss) <= 1e-5 * abs(pt_loss), (s, tf_loss, pt_loss)
    tf_state, pt_state = tf_trainer.get_state(), pt_trainer.get_state()
    assert tf_state.step == pt_state.step == 10
    assert max_diff(tf_state.params, pt_state.params) <= 10 * STEP_TOL
