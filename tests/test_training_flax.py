"""bert_flax.training: the optax AdamW step against the spec of bert_common.training, accumulation, resume,
compilation, bf16, the loss table against the models' own losses, and jax.sharding (data parallel and
FSDP on forced host devices) against one device.

Budgets. One step is judged by the conformance tolerance of an AdamW step (fp32/cpu ``step`` row:
1e-5 absolute on the weights). Multi-step runs (accumulation, devices) are judged against fp32 noise
measured in the same run: the 1-device run is repeated from weights moved by one fp32 ulp (random sign),
and the spread of that repeat from the straight run, step by step, is how far rounding alone carries a
run. A run whose only change is summation order (K micro-batches, N devices) must stay within 4 x that
spread (and a floor of 4 ulps of the value, as the spread can be exactly 0 on a step).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
pytest.importorskip("optax")

from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.training import TrainingArguments, TrainState, decays, lr_at  # noqa: E402
from bert_common.training.synthetic import SyntheticPretrainingDataset  # noqa: E402
from bert_common.weights import canonical_shapes, scheme_path  # noqa: E402
from bert_flax.modeling import build  # noqa: E402
from bert_flax.training import (LOSS_TERMS, Trainer, dataset_batches, decay_mask, head_loss, prefetch,  # noqa: E402
                                 schedule)
from conformance.tolerances import tolerance  # noqa: E402

FAST = {"xla_backend_optimization_level": 0}   # CPU compiles several times faster; same fp32 arithmetic
EPS32 = float(np.finfo(np.float32).eps)
CLASS = "BertForPreTraining"
ARGS = dict(learning_rate=1e-3, max_steps=10, batch_size=8, warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0,
            dropout=False)
# One step judged against the formula: a rate and decay large enough that every term shows above the budget.
FORMULA_ARGS = {**ARGS, "learning_rate": 1e-2, "weight_decay": 0.1}


def _batches(config, steps, batch_size=8, seq_len=16):
    ds = SyntheticPretrainingDataset(config.vocab_size, n=steps * batch_size, seq_len=seq_len, seed=0)
    return [ds.batch(range(i * batch_size, (i + 1) * batch_size)) for i in range(steps)]


def _ulp_perturbed(params, seed=1):
    """Every weight moved one fp32 ulp up or down (random sign)."""
    rng = np.random.default_rng(seed)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    return {k: np.nextafter(v, np.where(rng.random(v.shape) < 0.5, down, up).astype(np.float32)).astype(np.float32)
            for k, v in params.items()}


def _fresh(params, step=0):
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    return TrainState(dict(params), zeros, {k: v.copy() for k, v in zeros.items()}, step)


def _run(trainer, batches, start=None):
    if start is not None:
        trainer.set_state(start)
    losses = [trainer.step(b) for b in batches]
    return {"losses": losses, "params": trainer.get_state().params}


def _within_noise(name, got, ref, noise):
    """``got`` (a run differing from ``ref`` only in summation order) is within 4 x the ulp-repeat spread
    ``noise`` of ``ref``: losses step by step (running max of the spread), weights norm-wise and entry-wise."""
    lg, lr_, ln = (np.asarray(x["losses"], np.float64) for x in (got, ref, noise))
    spread = np.maximum.accumulate(np.abs(ln - lr_))
    budget = 4 * np.maximum(spread, EPS32 * np.abs(lr_))
    assert np.all(np.abs(lg - lr_) <= budget), (name, np.abs(lg - lr_), budget)
    d_got = np.concatenate([(got["params"][k] - ref["params"][k]).ravel() for k in ref["params"]])
    d_noise = np.concatenate([(noise["params"][k] - ref["params"][k]).ravel() for k in ref["params"]])
    floor = EPS32 * max(np.max(np.abs(v)) for v in ref["params"].values())
    assert np.linalg.norm(d_got) <= 4 * max(np.linalg.norm(d_noise), floor), (name, np.linalg.norm(d_got),
                                                                               np.linalg.norm(d_noise))
    assert np.max(np.abs(d_got)) <= 4 * max(np.max(np.abs(d_noise)), floor), (name, np.max(np.abs(d_got)),
                                                                               np.max(np.abs(d_noise)))


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    init = random_weights(config, CLASS, seed=0)
    return config, init, _batches(config, 10)


@pytest.fixture(scope="module")
def straight(setup):
    """10 updates of one Trainer (states kept after 2, 4 and 10), then the ulp-perturbed repeat (after 2, 10)."""
    config, init, batches = setup
    trainer = Trainer(build(CLASS, config, init), TrainingArguments(**ARGS), compiler_options=FAST)
    first = _run(trainer, batches[:2])
    mid = trainer.get_state()
    losses = first["losses"] + [trainer.step(b) for b in batches[2:4]]
    final = trainer.get_state()
    losses += [trainer.step(b) for b in batches[4:]]
    run = {"losses": losses, "params": trainer.get_state().params, "mid": mid, "final": final}
    noise2 = _run(trainer, batches[:2], _fresh(_ulp_perturbed(init)))
    rest = _run(trainer, batches[2:])
    noise = {"losses": noise2["losses"] + rest["losses"], "params": rest["params"]}
    return {"run": run, "first2": first, "noise2": noise2, "noise": noise, "trace_count": trainer.trace_count}


@pytest.fixture(scope="module")
def second(setup):
    """A second fp32 Trainer; each test sets its state first, so the tests stay independent."""
    config, init, _ = setup
    return Trainer(build(CLASS, config, init), TrainingArguments(**ARGS), compiler_options=FAST)


# ---------------------------------------------------------------------------------------------- spec pieces
@pytest.mark.parametrize("kw", [dict(max_steps=10, warmup_steps=3), dict(max_steps=50, warmup_ratio=0.1),
                                dict(max_steps=7, warmup_steps=0), dict(max_steps=9, warmup_steps=9)])
def test_schedule_equals_lr_at(kw):
    args = TrainingArguments(learning_rate=3e-4, batch_size=8, **kw)
    lr = schedule(args)
    counts = range(args.max_steps + 3)  # past the end too (lr_at is 0 there)
    got = np.asarray([lr(jnp.asarray(c, jnp.int32)) for c in counts])
    want = np.asarray([lr_at(c, args) for c in counts], np.float32)
    np.testing.assert_array_equal(got, want)
    assert got[0] == 0.0 or args.num_warmup_steps == 0


def test_decay_mask_is_the_no_decay_rule():
    config = tiny_config()
    flat = {"/".join(p.key for p in path): v for path, v in
            jax.tree_util.tree_flatten_with_path(decay_mask(config, CLASS))[0]}
    names = canonical_shapes(config, CLASS)
    assert len(flat) == len(names)
    for name in names:
        assert flat[scheme_path(name, "flax")[0]] == decays(name), name
    off = sorted(n for n in names if not decays(n))
    assert "bert.embeddings.LayerNorm.weight" in off and "cls.predictions.bias" in off
    assert all(n.endswith(".bias") or ".LayerNorm." in n for n in off)
    assert decays("bert.encoder.layer.0.attention.self.query.weight")


def test_dataset_batches_follow_the_loop_order():
    from bert_common.training.loop import batch_indices
    ds = SyntheticPretrainingDataset(99, n=20, seq_len=16, seed=3)
    args = TrainingArguments(**{**ARGS, "batch_size": 4, "max_steps": 7, "seed": 5})
    got = list(dataset_batches(ds, args, start_step=2))
    assert len(got) == 5   # updates 2..6, crossing an epoch (5 updates per epoch)
    for step, batch in zip(range(2, 7), got):
        epoch, idx = batch_indices(step, len(ds), 4, 5)
        for key, value in ds.batch(idx, epoch=epoch).items():
            np.testing.assert_array_equal(batch[key], value)


@pytest.mark.parametrize("model_class, overrides, label_dtype", [
    ("BertForPreTraining", {}, None),
    ("BertForSequenceClassification", {}, None),
    ("BertForSequenceClassification", {"num_labels": 1}, np.float32),                       # regression
    ("BertForSequenceClassification", {"problem_type": "multi_label_classification"}, np.float32),
    ("BertForTokenClassification", {}, None),
    ("BertForQuestionAnswering", {"num_labels": 2}, None),
    ("BertForMultipleChoice", {}, None),
])
def test_head_loss_is_the_models_loss(model_class, overrides, label_dtype):
    """The Trainer's token-weighted loss of a whole batch equals the head's own (Hugging Face) loss."""
    config = tiny_config(**overrides)
    model = build(model_class, config, random_weights(config, model_class, seed=2), compiler_options=FAST)
    batch = random_inputs(config, model_class, batch=4, seq=9, seed=3)
    if model_class == "BertForQuestionAnswering":
        batch["start_positions"][0] = 40   # clamped to S: outside the text, ignored
    if label_dtype is not None:
        rng = np.random.default_rng(0)
        batch["labels"] = (rng.random((4, config.num_labels)) < 0.5).astype(label_dtype)
        if config.num_labels == 1:
            batch["labels"] = rng.standard_normal(4).astype(label_dtype)
    want = float(model(**batch).loss)
    out = model(**{k: v for k, v in batch.items() if k not in model.label_names})
    prepared = {k: jnp.asarray(v) for k, v in batch.items()}
    got = float(head_loss(model_class, config, dict(out), prepared))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert model_class in LOSS_TERMS


# ---------------------------------------------------------------------------------------------- the step
def test_one_step_is_the_adamw_formula(setup):
    """From a state with non-zero moments at step 3: clip, decay (masked), moments, bias-corrected update,
    in float64 NumPy from the model's own gradients, against one Trainer.step."""
    from conformance.adapters import flax as adapter
    config, init, batches = setup
    args = TrainingArguments(**FORMULA_ARGS)
    trainer = Trainer(build(CLASS, config, init), args, compiler_options=FAST)
    rng = np.random.default_rng(5)
    m = {k: (1e-2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in init.items()}
    v2 = {k: rng.uniform(1e-4, 1e-3, v.shape).astype(np.float32) for k, v in init.items()}
    start = TrainState(dict(init), m, v2, 3)
    trainer.set_state(start)
    batch = batches[0]
    loss, grads = adapter.grads(build(CLASS, config, init), batch)
    got_loss = trainer.step(batch)
    got = trainer.get_state()

    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values()))
    assert norm > args.max_grad_norm  # the clip is exercised
    coef = min(1.0, args.max_grad_norm / (norm + 1e-6))
    lr, t = lr_at(3, args), 4
    b1, b2, eps, wd = args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay
    tol = tolerance("float32", "cpu").step
    for name, w0 in init.items():
        g = grads[name].astype(np.float64) * coef
        w = w0.astype(np.float64)
        if decays(name):
            w = w - lr * wd * w
        mm = b1 * m[name] + (1 - b1) * g
        vv = b2 * v2[name] + (1 - b2) * g * g
        w = w - lr * (mm / (1 - b1 ** t)) / (np.sqrt(vv / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(got.params[name], w, rtol=0, atol=tol.abs, err_msg=name)
        np.testing.assert_allclose(got.exp_avg[name], mm, rtol=1e-5, atol=1e-5 * np.max(np.abs(mm)), err_msg=name)
        np.testing.assert_allclose(got.exp_avg_sq[name], vv, rtol=1e-5, err_msg=name)
    assert got.step == 4
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    # the decay term (lr * wd * |w| ~ 1e-3 * 0.2) is 20x the tolerance, so a wrong mask fails above
    assert lr * wd * 0.2 > 10 * tol.abs


def test_state_round_trip_continues_identically(setup, straight, second):
    """get_state after 2 updates -> set_state into another Trainer -> updates 3, 4 equal the straight run."""
    _, _, batches = setup
    run = straight["run"]
    assert run["mid"].step == 2 and run["final"].step == 4
    second.set_state(run["mid"])
    assert second.step_count == 2 and second.lr == pytest.approx(lr_at(2, TrainingArguments(**ARGS)))
    losses = [second.step(b) for b in batches[2:4]]
    np.testing.assert_array_equal(losses, run["losses"][2:4])
    final = second.get_state()
    for name, w in run["final"].params.items():
        np.testing.assert_array_equal(final.params[name], w, err_msg=name)
        np.testing.assert_array_equal(final.exp_avg_sq[name], run["final"].exp_avg_sq[name], err_msg=name)
    assert final.step == 4


def test_step_compiles_once_per_shape(setup, straight, second):
    """One compilation per (batch shape, P), P the gathered MLM positions of the sparse head: every batch
    of the synthetic data (1-2 masked tokens a row) has P = 8, so only a new S or a busier batch compiles."""
    from bert_common.training import with_mlm_positions
    config, init, batches = setup
    assert all(with_mlm_positions(b)["mlm_positions"].shape == (8, 8) for b in batches)
    assert straight["trace_count"] == 1   # 10 updates + a set_state + 10 more, one compilation
    second.set_state(_fresh(init))
    before = second.trace_count
    assert before <= 1
    for b in _batches(config, 2):
        second.step(b)
    assert second.trace_count == 1
    for b in _batches(config, 2, seq_len=12):   # a new shape compiles once more, then is cached too
        second.step(b)
    assert second.trace_count == 2
    busy = dict(batches[0])
    busy["labels"] = busy["labels"].copy()
    busy["labels"][0, :10] = busy["input_ids"][0, :10]   # 10 labels in a row: P = 16 = S, a new program
    assert with_mlm_positions(busy)["mlm_positions"].shape == (8, 16)
    second.step(busy)
    second.step(busy)
    assert second.trace_count == 3
    second.step(batches[1])   # back to P = 8: cached
    assert second.trace_count == 3


def test_accumulation_equals_one_batch(setup, straight):
    config, init, batches = setup
    trainer = Trainer(build(CLASS, config, init), TrainingArguments(**ARGS, gradient_accumulation_steps=4),
                      compiler_options=FAST)
    losses = [trainer.step(b) for b in batches[:2]]
    _within_noise("accumulation 4", {"losses": losses, "params": trainer.get_state().params},
                  straight["first2"], straight["noise2"])


def test_bfloat16_mixed_precision(setup, straight):
    config, init, batches = setup
    trainer = Trainer(build(CLASS, config, init), TrainingArguments(**{**ARGS, "dtype": "bfloat16"}),
                      compiler_options=FAST)
    losses = [trainer.step(b) for b in prefetch(batches[:3], trainer)]
    assert all(np.isfinite(losses))
    # bf16 compute against the fp32 run: the conformance bf16 output budget (6e-2 relative)
    np.testing.assert_allclose(losses, straight["run"]["losses"][:3], rtol=tolerance("bfloat16", "cpu").outputs.rel)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(trainer.state.params))
    state = trainer.get_state()
    moved = max(np.max(np.abs(state.params[k] - init[k])) for k in init)
    assert moved > 1e-3 and state.step == 3


# ---------------------------------------------------------------------------------------------- sparse MLM
SPARSE_ARGS = dict(learning_rate=1e-3, max_steps=10, batch_size=8, warmup_steps=0, max_grad_norm=None, dropout=True,
                   gradient_accumulation_steps=2)


@pytest.fixture(scope="module", params=["BertForPreTraining", "BertForMaskedLM"])
def sparse_pair(request):
    """One update from the same weights with the sparse MLM head and with the full-logits one (SPARSE_MLM
    patched empty), dropout on (so the masks must match too) and 2 accumulation micro-batches."""
    import bert_flax.training as flax_training
    from bert_common.training import SPARSE_MLM
    model_class = request.param
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    init = random_weights(config, model_class, seed=0)
    batch = _batches(config, 1)[0]
    out = {"class": model_class, "config": config, "init": init, "batch": batch}
    for name, table in (("sparse", SPARSE_MLM), ("full", {})):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(flax_training, "SPARSE_MLM", table)
            trainer = Trainer(build(model_class, config, init), TrainingArguments(**SPARSE_ARGS),
                              compiler_options=FAST)
        assert (trainer.sparse_field is not None) == (name == "sparse")
        out[name] = {"trainer": trainer, "loss": trainer.step(batch), "state": trainer.get_state()}
    return out


def test_sparse_mlm_update_is_the_full_logits_update(sparse_pair):
    """Same loss, same gradients, same weights as the full-logits step. The two differ only in the order of
    fp32 additions (the decoder's gradient sums over P instead of S rows per example, of which the extra
    rows are zero), so: the loss within 1e-6 relative (measured: bit-equal), each gradient within 2e-6 of
    its tensor's largest entry (~16 fp32 ulps; measured <= 5e-7), the weights within the conformance
    tolerance of an AdamW step. Gradients are read from exp_avg: from zero moments it is (1 - b1) * g.
    The attention key biases are held to the global scale only: softmax is invariant to them, so their
    gradient is zero but for rounding, and its rounding noise has no scale of its own."""
    sparse, full, init = sparse_pair["sparse"], sparse_pair["full"], sparse_pair["init"]
    np.testing.assert_allclose(sparse["loss"], full["loss"], rtol=1e-6)
    # the spare slots (labels -100) add nothing: the gathered labels hold every labelled token once
    from bert_common.training import loss_normalizers, with_mlm_positions
    batch = with_mlm_positions(sparse_pair["batch"])
    gathered = np.take_along_axis(batch["labels"], batch["mlm_positions"], axis=1)
    assert loss_normalizers({**batch, "labels": gathered}) == loss_normalizers(batch)
    assert sorted(gathered[gathered != -100]) == sorted(batch["labels"][batch["labels"] != -100])
    g_s, g_f = sparse["state"].exp_avg, full["state"].exp_avg
    scale = max(np.max(np.abs(g)) for g in g_f.values())
    assert scale > 1e-3
    for name in init:
        limit = scale if name.endswith("attention.self.key.bias") else np.max(np.abs(g_f[name]))
        assert np.max(np.abs(g_s[name] - g_f[name])) <= 2e-6 * limit, name
        assert np.max(np.abs(g_f[name])) > 0 or name.endswith("key.bias"), name   # every weight is trained
    tol = tolerance("float32", "cpu").step
    for name in init:
        np.testing.assert_allclose(sparse["state"].params[name], full["state"].params[name], rtol=0, atol=tol.abs,
                                   err_msg=name)
    assert max(np.max(np.abs(full["state"].params[k] - init[k])) for k in init) > 100 * tol.abs   # it moved


def _dot_shapes(jaxpr):
    """Output shapes of every dot_general in a jaxpr, nested jaxprs (jit, scan, grad) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield tuple(eqn.outvars[0].aval.shape)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dot_shapes(inner)


def test_sparse_mlm_head_runs_on_the_gathered_rows(sparse_pair):
    """The traced step's vocabulary matmul is (b, P, V) with P = 8 gathered positions, not (b, S, V) with
    S = 16 (b = 4: 8 rows in 2 micro-batches); the full path keeps (b, S, V)."""
    config = sparse_pair["config"]
    V = config.vocab_size
    shapes = {}
    for name in ("sparse", "full"):
        trainer = sparse_pair[name]["trainer"]
        arrays = trainer.shard(sparse_pair["batch"]).arrays
        assert ("mlm_positions" in arrays) == (name == "sparse")
        jaxpr = trainer._step.trace(trainer.state, arrays).jaxpr   # the jitted step as traced, not compiled
        shapes[name] = {s for s in _dot_shapes(jaxpr.jaxpr) if len(s) == 3 and s[-1] == V}
    assert shapes == {"sparse": {(4, 8, V)}, "full": {(4, 16, V)}}
    assert sparse_pair["sparse"]["trainer"].shard(sparse_pair["batch"]).arrays["mlm_positions"].shape == (2, 4, 8)


def test_mlm_positions_stay_private(setup):
    """Only the trainer passes mlm_positions: the public forward still refuses the keyword."""
    config, init, batches = setup
    model = build(CLASS, config, init)
    with pytest.raises(TypeError, match="mlm_positions"):
        model(input_ids=batches[0]["input_ids"], mlm_positions=np.zeros((8, 8), np.int32))
    with pytest.raises(TypeError, match="mlm_positions"):
        model.apply(model.params, input_ids=batches[0]["input_ids"], mlm_positions=np.zeros((8, 8), np.int32))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_a_step(setup, second):
    config, init, batches = setup
    with pytest.raises(ValueError, match="--devices 64 is larger than the"):
        Trainer(build(CLASS, config, init), TrainingArguments(**{**ARGS, "batch_size": 64, "devices": 64}))
    with pytest.raises(ValueError, match="batch_size 6 does not divide over devices"):
        TrainingArguments(**{**ARGS, "batch_size": 6, "gradient_accumulation_steps": 4})
    with pytest.raises(ValueError, match="has no loss to train"):
        Trainer(build("BertModel", config), TrainingArguments(**ARGS))
    second.set_state(_fresh(init))
    bad = dict(batches[0])
    with pytest.raises(ValueError, match="--batch-size is 8"):
        second.step({k: v[:6] for k, v in bad.items()})
    with pytest.raises(ValueError, match="lacks \\['next_sentence_label'\\]"):
        second.step({k: v for k, v in bad.items() if k != "next_sentence_label"})
    labels = bad["labels"].copy()
    labels[0, 1] = config.vocab_size
    with pytest.raises(ValueError, match=f"batch\\['labels'\\] holds {config.vocab_size}, outside \\[0, 99\\)"):
        second.step({**bad, "labels": labels})
    ids = bad["input_ids"].copy()
    ids[0, 0] = 500
    with pytest.raises(ValueError, match="input_ids"):
        second.step({**bad, "input_ids": ids})
    assert second.get_state().step == 0


# ---------------------------------------------------------------------------------------------- devices
_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from bert_common.testing import random_weights, tiny_config
    from bert_common.training import TrainingArguments, TrainState
    from bert_common.training.synthetic import SyntheticPretrainingDataset
    from bert_flax.modeling import build
    from bert_flax.training import Trainer
    sys.path.insert(0, sys.argv[2])
    from test_training_flax import ARGS, CLASS, FAST, _fresh, _ulp_perturbed

    assert jax.device_count() == 8, jax.devices()
    config = tiny_config()
    init = random_weights(config, CLASS, seed=0)
    ds = SyntheticPretrainingDataset(config.vocab_size, n=80, seq_len=16, seed=0)
    batches = [ds.batch(range(8 * i, 8 * i + 8)) for i in range(10)]
    out = {}

    def run(name, trainer, start=None):
        if start is not None:
            trainer.set_state(start)
        losses = [trainer.step(b) for b in batches]
        out[name] = {"losses": losses, "params": {k: v.tolist() for k, v in trainer.get_state().params.items()}}
        return trainer

    one = run("1", Trainer(build(CLASS, config, init), TrainingArguments(**ARGS), compiler_options=FAST))
    run("noise", one, _fresh(_ulp_perturbed(init)))
    for n in (2, 4, 8):
        t = run(f"data{n}", Trainer(build(CLASS, config, init), TrainingArguments(**ARGS, devices=n),
                                    compiler_options=FAST))
        assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(t.state.params))
    t = Trainer(build(CLASS, config, init), TrainingArguments(**ARGS, devices=8, parallelism="fsdp"),
                mesh_shape=(2, 4), compiler_options=FAST)
    run("fsdp2x4", t)
    kernel = t.state.params["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]   # (32, 37)
    mu = t.state.opt_state[1][0].mu["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
    out["fsdp_shards"] = [tuple(s.data.shape) for s in kernel.addressable_shards][:1] + [
        tuple(s.data.shape) for s in mu.addressable_shards][:1]
    out["fsdp_mesh"] = dict(t.mesh.shape)
    try:
        Trainer(build(CLASS, config, init), TrainingArguments(**{**ARGS, "batch_size": 16, "devices": 16}))
    except ValueError as e:
        out["too_many"] = str(e)
    json.dump(out, open(sys.argv[1], "w"))
""")


@pytest.mark.slow
def test_devices_equal_one_device(tmp_path):
    """Data parallel on 2/4/8 host devices and FSDP on a 2x4 mesh: 10 updates of a global batch of 8 give
    the losses and weights of one device, within the measured fp32 noise (module docstring)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = tmp_path / "runs.json"
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(result), os.path.dirname(__file__)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(result.read_text())
    as_np = {k: {"losses": v["losses"], "params": {n: np.asarray(a, np.float32) for n, a in v["params"].items()}}
             for k, v in runs.items() if isinstance(v, dict) and "losses" in v}
    ref, noise = as_np["1"], as_np["noise"]
    assert max(np.max(np.abs(ref["params"][k] - np.asarray(v))) for k, v in random_weights(
        tiny_config(), CLASS, seed=0).items()) > 2e-3   # it trains (lr 1e-3: ~5e-3 in 10 steps)
    assert ref["losses"] != noise["losses"] or any(
        not np.array_equal(ref["params"][k], noise["params"][k]) for k in ref["params"])   # the noise is real
    for name in ("data2", "data4", "data8", "fsdp2x4"):
        _within_noise(name, as_np[name], ref, noise)
    assert runs["fsdp_mesh"] == {"data": 2, "fsdp": 4}
    assert [tuple(s) for s in runs["fsdp_shards"]] == [(8, 37), (8, 37)]   # weight and moment: 1/4 each
    assert "--devices 16 is larger than the 8 device(s)" in runs["too_many"]


# ---------------------------------------------------------------------------------------------- vs torch
@pytest.mark.slow
def test_flax_matches_torch_trainer(setup, straight):
    """The same 10 updates (tiny config, dropout off, same data and init) in bert_torch.training: within
    the ulp-repeat noise of this backend, like the device checks (measured: losses agree to ~2e-7
    relative; weights to ~2e-7 except the attention key biases, whose gradient is mathematically zero and
    which AdamW moves by rounding noise alone, ~1e-5 apart in both comparisons)."""
    torch_training = pytest.importorskip("bert_torch.training")
    import bert_torch
    config, init, batches = setup
    tt = torch_training.Trainer(bert_torch.BertForPreTraining(config), TrainingArguments(**ARGS))
    torch_run = _run(tt, batches, _fresh(init))
    _within_noise("torch", torch_run, straight["run"], straight["noise"])
