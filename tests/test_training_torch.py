"""bert_torch.training.Trainer against the spec of bert_common.training (schedule, mask, AdamW formula, loss
reduction, accumulation, state round trip) and, under torchrun, DDP / FSDP2 against one process.

Tolerances: a step is compared with the AdamW formula evaluated in float64 NumPy from torch gradients
taken at the formula's weights, so the only difference is fp32 rounding of the update (atol 1e-7 on weights
of scale 0.02, rtol 1e-5) and of the gradients (moments: 1e-5 of each tensor's largest entry). Accumulation / N processes change only the summation order of fp32 gradients: 2e-6 on weights
after a few steps and 2e-6 on losses (measured: 1.2e-7 and 7.2e-7).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bert_common.testing import random_inputs, tiny_config  # noqa: E402
from bert_common.training import TrainingArguments, clip_coefficient, decays, lr_at  # noqa: E402
from bert_common.training.synthetic import SyntheticPretrainingDataset  # noqa: E402
from bert_torch import MODEL_CLASSES, BertForPreTraining  # noqa: E402
from bert_torch.training import SPARSE_MLM, Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = tiny_config()
DATA = SyntheticPretrainingDataset(CONFIG.vocab_size, n=32, seq_len=16, seed=1)


def _args(**kw) -> TrainingArguments:
    base = dict(learning_rate=1e-3, max_steps=10, batch_size=8, warmup_steps=0, dropout=False)
    return TrainingArguments(**{**base, **kw})


def _batch(step: int) -> dict:
    return DATA.batch(range(8 * (step % 4), 8 * (step % 4) + 8))


def test_schedule_is_lr_at_exactly():
    args = _args(max_steps=7, warmup_steps=3)
    trainer = Trainer(BertForPreTraining(CONFIG, seed=0), args)
    seen = []
    for s in range(7):
        seen.append(trainer.lr)
        trainer.step(_batch(s))
    seen.append(trainer.lr)
    assert seen == [lr_at(s, args) for s in range(8)]
    assert seen[:4] == [0.0, 1e-3 / 3, 2e-3 / 3, 1e-3] and seen[-1] == 0.0


def test_no_decay_groups():
    trainer = Trainer(BertForPreTraining(CONFIG, seed=0), _args())
    name_of = {id(p): n for n, p in trainer.model.named_parameters()}
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    d = {name_of[id(p)] for p in decay["params"]}
    nd = {name_of[id(p)] for p in no_decay["params"]}
    assert d and nd and not d & nd and d | nd == set(name_of.values())
    assert all(n.endswith(".bias") or ".LayerNorm." in n for n in nd)
    assert "bert.embeddings.LayerNorm.weight" in nd and "cls.predictions.bias" in nd
    assert "bert.encoder.layer.0.attention.self.query.weight" in d
    assert all(decays(n) for n in d)


def _grads(params: dict, batch: dict) -> tuple[float, dict]:
    """HF loss and gradients at ``params`` (a fresh model, the model's own loss)."""
    model = BertForPreTraining(CONFIG, seed=0)
    model.load_canonical_state_dict(params)
    out = model(**{k: v.astype(np.int64) for k, v in batch.items()}, return_dict=True)
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad.double().numpy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_two_steps_equal_the_adamw_formula(max_grad_norm):
    args = _args(max_grad_norm=max_grad_norm, weight_decay=0.1, warmup_steps=1, max_steps=4)
    trainer = Trainer(BertForPreTraining(CONFIG, seed=0), args)
    w = {k: v.astype(np.float64) for k, v in trainer.get_state().params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    clipped = []
    for step in range(3):
        loss, g = _grads({k: x.astype(np.float32) for k, x in w.items()}, _batch(step))
        norm = float(np.sqrt(sum(np.sum(x ** 2) for x in g.values())))
        coef = clip_coefficient(norm, max_grad_norm)
        clipped.append(coef < 1.0)
        lr, b1, b2, eps, t = lr_at(step, args), 0.9, 0.999, 1e-6, step + 1
        for k in w:
            gk = g[k] * coef
            if decays(k):
                w[k] = w[k] - lr * args.weight_decay * w[k]
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk ** 2
            w[k] = w[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
        got_loss = trainer.step(_batch(step))
        assert got_loss == pytest.approx(loss, rel=1e-6)
        state = trainer.get_state()
        assert state.step == step + 1
        m_top = max(np.abs(x).max() for x in m.values())
        v_top = max(np.abs(x).max() for x in v.values())
        for k in w:
            np.testing.assert_allclose(state.params[k], w[k], rtol=1e-5, atol=1e-7, err_msg=f"step {step} {k}")
            # moments carry the gradients' own fp32 noise (the reference gradient is recomputed at the
            # float64 formula's weights): judged against 1e-5 of the tensor's largest entry, and against 1e-6
            # of the largest moment anywhere for tensors whose gradient is mathematically zero (key biases)
            for got, want, top in ((state.exp_avg[k], m[k], m_top), (state.exp_avg_sq[k], v[k], v_top)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=max(1e-5 * np.abs(want).max(), 1e-6 * top),
                                           err_msg=k)
    assert any(clipped) == (max_grad_norm is not None)  # the bound really clips


@pytest.mark.parametrize("accumulation", [2, 4])
def test_accumulation_equals_one_big_batch(accumulation):
    one = Trainer(BertForPreTraining(CONFIG, seed=0), _args(max_steps=3, warmup_steps=1))
    acc = Trainer(BertForPreTraining(CONFIG, seed=0), _args(max_steps=3, warmup_steps=1,
                                                                gradient_accumulation_steps=accumulation))
    for s in range(3):
        assert acc.step(_batch(s)) == pytest.approx(one.step(_batch(s)), rel=2e-6)
    a, b = one.get_state(), acc.get_state()
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("model_class", ["BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
                                         "BertForTokenClassification", "BertForQuestionAnswering",
                                         "BertForMultipleChoice", "BertForNextSentencePrediction"])
def test_step_loss_is_the_models_hf_loss(model_class):
    config = tiny_config(num_labels=2 if model_class == "BertForQuestionAnswering" else 3)
    batch = random_inputs(config, model_class, batch=4, seq=9, seed=5)
    if "end_positions" in batch:  # the loss rule divides by rows: keep every position inside the text
        batch["end_positions"] = np.minimum(batch["end_positions"], 8)
    model = MODEL_CLASSES[model_class](config, seed=0)
    with torch.no_grad():
        want = float(model(**batch, return_dict=True).loss)
    trainer = Trainer(model, _args(batch_size=4, gradient_accumulation_steps=2))
    assert trainer.step(batch) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("model_class", sorted(SPARSE_MLM))
def test_labelled_positions_only_is_the_full_logits_update(monkeypatch, model_class):
    """The MLM head at labelled positions only (SPARSE_MLM) gives the full-logits path's loss and update: in
    float64 they agree to rounding (1e-12), and the sparse path really ran on the n labelled rows only."""
    batch = _batch(0)
    if model_class == "BertForMaskedLM":
        del batch["next_sentence_label"]
    n = int((batch["labels"] != -100).sum())
    assert 0 < n < batch["labels"].size
    seen = []

    def run(sparse: bool):
        monkeypatch.setattr("bert_torch.training.SPARSE_MLM", SPARSE_MLM if sparse else {})
        trainer = Trainer(MODEL_CLASSES[model_class](CONFIG, seed=0), _args(), master_dtype=torch.float64)
        trainer.model.cls.predictions.register_forward_hook(lambda m, i, o: seen.append(o.shape[:-1].numel()))
        losses = [trainer.step(batch) for _ in range(2)]
        return losses, trainer.get_state().params

    (sparse_losses, sparse_w), (full_losses, full_w) = run(True), run(False)
    assert seen == [n, n, batch["labels"].size, batch["labels"].size]
    np.testing.assert_allclose(sparse_losses, full_losses, rtol=1e-12)
    for k in full_w:
        np.testing.assert_allclose(sparse_w[k], full_w[k], rtol=0, atol=1e-12, err_msg=k)


def test_state_round_trip_continues_identically():
    a = Trainer(BertForPreTraining(CONFIG, seed=0), _args(dropout=True))
    for s in range(3):
        a.step(_batch(s))
    b = Trainer(BertForPreTraining(CONFIG, seed=7), _args(dropout=True))
    b.set_state(a.get_state())
    assert b.lr == a.lr == lr_at(3, a.args)
    for s in range(3, 6):
        assert b.step(_batch(s)) == a.step(_batch(s))  # bitwise: same weights, moments, dropout keys
    sa, sb = a.get_state(), b.get_state()
    assert all(np.array_equal(sa.params[k], sb.params[k]) and np.array_equal(sa.exp_avg_sq[k], sb.exp_avg_sq[k])
               for k in sa.params)


def test_dropout_switch():
    on = Trainer(BertForPreTraining(tiny_config(hidden_dropout_prob=0.3), seed=0), _args(dropout=True))
    off = Trainer(BertForPreTraining(tiny_config(hidden_dropout_prob=0.3), seed=0), _args(dropout=False))
    assert on.model.training and not off.model.training
    assert on.step(_batch(0)) != off.step(_batch(0))


def test_bfloat16_autocast_keeps_fp32_master_weights():
    fp32 = Trainer(BertForPreTraining(CONFIG, seed=0), _args())
    bf16 = Trainer(BertForPreTraining(CONFIG, seed=0), _args(dtype="bfloat16"))
    l32, l16 = fp32.step(_batch(0)), bf16.step(_batch(0))
    assert l16 != l32 and l16 == pytest.approx(l32, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert np.isfinite(bf16.step(_batch(1)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch has 4 rows but batch_size=8"):
        Trainer(BertForPreTraining(CONFIG, seed=0), _args()).step(DATA.batch(range(4)))
    with pytest.raises(ValueError, match="devices=2 needs torchrun"):
        Trainer(BertForPreTraining(CONFIG, seed=0), _args(devices=2))
    with pytest.raises(ValueError, match="BertModel has no training loss"):
        Trainer(MODEL_CLASSES["BertModel"](CONFIG, seed=0), _args())


# ---------------------------------------------------------------------------------------------- torchrun
def _run_worker(out: str, nproc: int, parallelism: str, accumulation: int = 1) -> dict:
    worker = os.path.join(ROOT, "tests", "data", "torch_dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    if nproc == 1:
        cmd = [sys.executable, worker, out, parallelism, str(accumulation)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", worker,
               out, parallelism, str(accumulation)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    return _run_worker(str(tmp_path_factory.mktemp("dist") / "one.npz"), 1, "data")


@pytest.mark.slow
@pytest.mark.parametrize("parallelism,accumulation", [("data", 2), ("fsdp", 2)])
def test_two_processes_equal_one(tmp_path, single_process, parallelism, accumulation):
    got = _run_worker(str(tmp_path / "two.npz"), 2, parallelism, accumulation)
    np.testing.assert_allclose(got["losses"], single_process["losses"], rtol=0, atol=2e-6)
    for k in single_process:
        if k.startswith("param."):
            np.testing.assert_allclose(got[k], single_process[k], rtol=0, atol=2e-6, err_msg=k)
        if k.startswith("exp_avg_sq."):  # the FSDP gather returns whole moments under canonical names
            np.testing.assert_allclose(got[k], single_process[k], rtol=1e-4, atol=1e-12, err_msg=k)


def test_get_state_is_a_snapshot():
    trainer = Trainer(BertForPreTraining(CONFIG, seed=0), _args())
    before = trainer.get_state()
    kept = {k: v.copy() for k, v in before.params.items()}
    trainer.step(_batch(0))
    assert all(np.array_equal(before.params[k], kept[k]) for k in kept)  # later steps do not reach it
