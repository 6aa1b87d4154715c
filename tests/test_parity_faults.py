"""The conformance suite catches real bugs: faults injected from outside into ONE backend must make
`bertrio parity` exit 1 and name the first tensor on the forward path that went wrong."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bert_common import weights as W
from bert_common.checkpoint import save_checkpoint
from bert_common.cli import main
from bert_common.testing import random_weights, tiny_config
from conformance import suite

BACKENDS = suite.available_backends(suite.ALL_BACKENDS)
pytestmark = pytest.mark.skipif(len(BACKENDS) < 2, reason=f"need two backends, have {BACKENDS}")
# The backend that gets the fault: the last installed one; the first stays the clean reference.
VICTIM = BACKENDS[-1] if BACKENDS else None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = tiny_config("absolute")
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, cfg, random_weights(cfg, "BertForPreTraining", seed=5))
    return str(path)


def _parity(ckpt, tmp_path, heads="BertModel"):
    report = tmp_path / "r.json"
    code = main(["parity", ckpt, "--backends", f"{BACKENDS[0]},{VICTIM}", "--heads", heads, "--checks", "forward",
                 "--seq", "8", "--report", str(report), "--junit", str(tmp_path / "r.xml"),
                 "--markdown", str(tmp_path / "r.md")])
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


def test_clean_run_passes_and_writes_all_reports(ckpt, tmp_path):
    code, data = _parity(ckpt, tmp_path, heads="all")
    assert code == 0 and data["passed"]
    assert {r["model_class"] for r in data["results"]} == set(W.HEADS)
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


def test_bad_usage_exits_2(ckpt, tmp_path, capsys):
    assert main(["parity", ckpt, "--backends", "torch,caffe"]) == 2
    assert "--backends: 'caffe' is not one of" in capsys.readouterr().err
    assert main(["parity", ckpt, "--dtype", "float8"]) == 2
    assert main(["parity", ckpt, "--heads", "BertForEverything"]) == 2
    assert main(["parity", str(tmp_path / "missing")]) == 2
