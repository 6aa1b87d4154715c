"""The conformance suite catches real bugs: faults injected from outside into ONE backend must make
`bertrio parity` exit 1 and name the first tensor on the forward path that went wrong.

Faults are injected by monkeypatching the victim's adapter (the config or weights it builds with, or the
rule its optimizer step reads), never by editing backend code; a fault in the model's arithmetic is
injected as the weights that make the same arithmetic (e.g. attention scaled by 1/sqrt(d+1) is the
query projection scaled by sqrt(d/(d+1))), so these tests do not depend on the backends' private names.
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

import pytest

from bert_common import weights as W
from bert_common.checkpoint import save_checkpoint
from bert_common.cli import main
from bert_common.testing import missing_reason, random_weights, tiny_config
from conformance import suite

BACKENDS = suite.available_backends(suite.ALL_BACKENDS)
pytestmark = pytest.mark.skipif(len(BACKENDS) < 2, reason=missing_reason(f"need two backends, have {BACKENDS}"))
# The backend that gets the fault: the last installed one; the first stays the clean reference.
VICTIM = BACKENDS[-1] if BACKENDS else None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = tiny_config("absolute")
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, cfg, random_weights(cfg, "BertForPreTraining", seed=5))
    return str(path)


def _parity(ckpt, tmp_path, heads="BertModel", checks="forward", extra=()):
    report = tmp_path / "r.json"
    code = main(["parity", ckpt, "--backends", f"{BACKENDS[0]},{VICTIM}", "--heads", heads, "--checks", checks,
                 "--seq", "8", "--quiet", "--report", str(report), "--junit", str(tmp_path / "r.xml"),
                 "--markdown", str(tmp_path / "r.md"), *extra])
    data = json.loads(report.read_text())
    return code, data


def _first_failure(data):
    for r in data["results"]:
        for t in r["tensors"]:
            if not t["passed"]:
                return r["pair"], t
    return None, None


def _inject_config(monkeypatch, **changes):
    """Build the victim backend with a config that differs from the checkpoint's (e.g. its own defaults)."""
    ad = suite.adapter(VICTIM)
    real_build = ad.build

    def build(model_class, config, state, **kw):
        return real_build(model_class, config.replace(**changes), state, **kw)
    monkeypatch.setattr(ad, "build", build)


def _inject_state(monkeypatch, change):
    """Build the victim backend with weights ``change(name, array)`` instead of the checkpoint's."""
    ad = suite.adapter(VICTIM)
    real_build = ad.build

    def build(model_class, config, state, **kw):
        return real_build(model_class, config, {k: change(k, v) for k, v in state.items()}, **kw)
    monkeypatch.setattr(ad, "build", build)


def test_clean_run_passes_and_writes_all_reports(ckpt, tmp_path):
    code, data = _parity(ckpt, tmp_path, heads="all", checks="forward,cache")
    assert code == 0 and data["passed"]
    assert {r["model_class"] for r in data["results"]} == set(W.HEADS)
    assert data["environment"]["checks"] == ["forward"]  # only checks that ran (no decoder: no cache)
    assert {"bertrio", "torch", "numpy", "platform"} <= set(data["environment"]["versions"])
    assert "norm-wise" in (tmp_path / "r.md").read_text()
    assert "<testsuite" in (tmp_path / "r.xml").read_text() and "PASS" in (tmp_path / "r.md").read_text()


def test_swapped_gelu_variant_is_caught(ckpt, tmp_path, monkeypatch):
    _inject_config(monkeypatch, hidden_act="gelu_new")  # tanh approximation instead of erf
    code, data = _parity(ckpt, tmp_path)
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair
    assert t["path"] == "hidden_states.1"  # attentions.0 is before the MLP and still agrees
    assert "hidden_states.1" in (tmp_path / "r.md").read_text()


def test_layer_norm_epsilon_changed_is_caught(ckpt, tmp_path, monkeypatch):
    _inject_config(monkeypatch, layer_norm_eps=1e-3)  # Keras' LayerNormalization default
    code, data = _parity(ckpt, tmp_path)
    pair, t = _first_failure(data)
    assert code == 1 and t["path"] == "hidden_states.0"  # the embedding LayerNorm


def test_missing_transpose_in_one_mapped_tensor_is_caught(ckpt, tmp_path, monkeypatch):
    name = "encoder.layer.1.attention.self.query.weight"
    scheme = W.get_scheme(VICTIM)
    path, transpose = W.scheme_path(name, scheme)
    if not transpose:
        pytest.skip(f"{VICTIM} stores {name} untransposed; no transpose to drop")
    broken = dataclasses.replace(scheme, overrides={**scheme.overrides, name: (path, False)})
    monkeypatch.setitem(W.SCHEMES, VICTIM, broken)
    code, data = _parity(ckpt, tmp_path)
    pair, t = _first_failure(data)
    assert code == 1 and t["path"] == "attentions.1"  # layer 0 agrees; layer 1's scores are the first casualty
    assert t["max_abs"] > 1e-3


FFN_OUT = re.compile(r"(bert\.)?encoder\.layer\.\d+\.output\.dense\.weight")


def _ffn_off_by(rel):
    """The FFN's second projection of every layer off by a relative ``rel``."""
    return lambda k, v: (v * np.float32(1 + rel)).astype(np.float32) if FFN_OUT.fullmatch(k) else v


def _attention_scaled_by_sqrt_d_plus_1(cfg):
    """Scores q·k / sqrt(d + 1) instead of / sqrt(d): the same arithmetic as q scaled by sqrt(d / (d + 1))."""
    d = cfg.hidden_size // cfg.num_attention_heads
    f = np.float32(np.sqrt(d / (d + 1)))
    return lambda k, v: v * f if re.search(r"attention\.self\.query\.(weight|bias)$", k) else v


def _drop_bias(name):
    return lambda k, v: np.zeros_like(v) if k == name else v


@pytest.mark.parametrize("change, first", [
    (_ffn_off_by(1e-5), "hidden_states.1"),     # layer 0's FFN output is the first casualty
    ("attention", "attentions.0"),
])
def test_weight_faults_are_caught(ckpt, tmp_path, monkeypatch, change, first):
    if change == "attention":
        change = _attention_scaled_by_sqrt_d_plus_1(tiny_config("absolute"))
    _inject_state(monkeypatch, change)
    code, data = _parity(ckpt, tmp_path)
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair and t["path"] == first, t


def test_layer_norm_epsilon_1e_6_is_caught(ckpt, tmp_path, monkeypatch):
    _inject_config(monkeypatch, layer_norm_eps=1e-6)  # instead of BERT's 1e-12
    code, data = _parity(ckpt, tmp_path)
    pair, t = _first_failure(data)
    assert code == 1 and t["path"] == "hidden_states.0"


def test_dropped_bias_in_one_head_is_caught(ckpt, tmp_path, monkeypatch):
    """The NSP head adds no bias (the checkpoint's seq_relationship bias is nonzero; new heads start at 0)."""
    _inject_state(monkeypatch, _drop_bias("cls.seq_relationship.bias"))
    code, data = _parity(ckpt, tmp_path, heads="BertForNextSentencePrediction,BertForMaskedLM")
    bad = [r for r in data["results"] if not r["passed"]]
    assert code == 1 and [r["model_class"] for r in bad] == ["BertForNextSentencePrediction"]
    assert next(t for t in bad[0]["tensors"] if not t["passed"])["path"] == "logits"


def test_untied_decoder_is_caught(ckpt, tmp_path, monkeypatch):
    """Forward agrees (the untied copy holds the same values); the gradient of the word embeddings misses
    the decoder's share."""
    ad = suite.adapter(VICTIM)
    real_build = ad.build

    def build(model_class, config, state, **kw):
        if "cls.predictions.transform.dense.weight" not in state:
            return real_build(model_class, config, state, **kw)
        words = state["bert.embeddings.word_embeddings.weight"]
        return real_build(model_class, config.replace(tie_word_embeddings=False),
                          {**state, "cls.predictions.decoder.weight": words.copy()}, **kw)
    monkeypatch.setattr(ad, "build", build)
    code, data = _parity(ckpt, tmp_path, heads="BertForMaskedLM", checks="forward,grads")
    by_check = {r["check"]: r for r in data["results"]}
    assert code == 1 and by_check["forward"]["passed"] and not by_check["grads"]["passed"]
    first = next(t for t in by_check["grads"]["tensors"] if not t["passed"])
    assert first["path"] == "grad.bert.embeddings.word_embeddings.weight"


def test_wrong_no_decay_mask_is_caught(ckpt, tmp_path, monkeypatch):
    """The victim's optimizer step decays every parameter (biases and LayerNorm too)."""
    ad = suite.adapter(VICTIM)
    real_step = ad.adamw_step

    def adamw_step(*a, **kw):
        with monkeypatch.context() as m:
            m.setattr(W, "no_weight_decay", lambda name: False)
            return real_step(*a, **kw)
    monkeypatch.setattr(ad, "adamw_step", adamw_step)
    code, data = _parity(ckpt, tmp_path, heads="BertForSequenceClassification", checks="adamw")
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair and W.no_weight_decay(t["path"]), t
    assert all(W.no_weight_decay(x["path"]) for x in data["results"][0]["tensors"] if not x["passed"])


def test_bad_usage_exits_2(ckpt, tmp_path, capsys):
    assert main(["parity", ckpt, "--backends", "torch,caffe"]) == 2
    assert "--backends: 'caffe' is not one of" in capsys.readouterr().err
    assert main(["parity", ckpt, "--dtype", "float8"]) == 2
    assert main(["parity", ckpt, "--heads", "BertForEverything"]) == 2
    assert main(["parity", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_detection_floor_on_minilm(minilm_dir, tmp_path, monkeypatch):
    """The sensitivity the issue asks to keep: the rules before the float64 calibration flagged a relative
    3e-6 error in every layer's FFN output projection on MiniLM; the calibrated ones must flag 9e-6 (3x)
    with the default checks (docs/tolerances.md gives the measured floor)."""
    _inject_state(monkeypatch, _ffn_off_by(9e-6))
    report = tmp_path / "r.json"
    code = main(["parity", minilm_dir, "--backends", f"{BACKENDS[0]},{VICTIM}", "--quiet", "--report", str(report)])
    data = json.loads(report.read_text())
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair, t


# ------------------------------------------------------------------ the train check (bertrio parity --checks train)
TRAIN_ARGS = ("--train-steps", "6")


def _victim_training(monkeypatch, name, value):
    """Replace a name the victim backend's trainer module reads (``bert_<victim>.training``)."""
    import importlib
    monkeypatch.setattr(importlib.import_module(f"bert_{VICTIM}.training"), name, value)


@pytest.mark.slow
def test_train_check_passes_clean_and_catches_decay_on_layer_norm(ckpt, tmp_path, monkeypatch):
    """Clean: every update's loss and final weight agree. Then the victim's trainer decays every parameter
    (biases and LayerNorm too): the check fails, and only on tensors the rule exempts from decay."""
    code, data = _parity(ckpt, tmp_path, heads="BertForSequenceClassification", checks="train", extra=TRAIN_ARGS)
    assert code == 0 and data["results"] and data["results"][0]["check"] == "train", data["results"]
    paths = [t["path"] for t in data["results"][0]["tensors"]]
    assert paths[:6] == [f"loss.step_{i:03d}" for i in range(1, 7)] and "classifier.weight" in paths
    assert data["environment"]["train"]["steps"] == 6
    _victim_training(monkeypatch, "decays", lambda name: True)
    code, data = _parity(ckpt, tmp_path, heads="BertForSequenceClassification", checks="train", extra=TRAIN_ARGS)
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair, t
    bad = [x["path"] for x in data["results"][0]["tensors"] if not x["passed"]]
    weights = [p for p in bad if not p.startswith("loss.")]
    assert any(".LayerNorm.weight" in p for p in weights), bad
    assert all(W.no_weight_decay(p) for p in weights), bad
    assert weights[0] in (tmp_path / "r.md").read_text()


@pytest.mark.slow
def test_train_check_catches_a_shifted_lr_schedule(ckpt, tmp_path, monkeypatch):
    """The victim's schedule runs one update ahead (the first update, at warmup step 0, gets a rate
    instead of 0): the loss of update 2 is the first to differ."""
    from bert_common.training import lr_at
    _victim_training(monkeypatch, "lr_at", lambda step, args: lr_at(step + 1, args))
    code, data = _parity(ckpt, tmp_path, heads="BertForSequenceClassification", checks="train", extra=TRAIN_ARGS)
    pair, t = _first_failure(data)
    assert code == 1 and VICTIM in pair and t["path"] == "loss.step_002", t
