"""The README's main job: `bertrio parity` on the embedded real checkpoint, all installed backends, and
the Hugging Face oracle on the same checkpoint (the former per-backend oracle tests, as parity runs)."""
import json
import warnings

import pytest

from bert_common.cli import main
from bert_common.testing import missing_reason
from conformance import suite

BACKENDS = suite.available_backends(suite.ALL_BACKENDS)
WITH_ORACLE = BACKENDS + suite.available_backends((suite.ORACLE,))


@pytest.mark.slow
@pytest.mark.skipif(len(BACKENDS) < 2, reason=missing_reason("needs two backends"))
def test_parity_on_minilm_passes_and_reports(minilm_dir, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # our own suite causes no warning (e.g. an SDPA fallback)
        code = main(["parity", minilm_dir, "--quiet", "--report", str(tmp_path / "r.json"),
                     "--junit", str(tmp_path / "r.xml"), "--markdown", str(tmp_path / "r.md")])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert captured.err.count("\r") == 0  # --quiet: no progress bar
    data = json.loads((tmp_path / "r.json").read_text())
    checks = {(r["check"], r["model_class"]) for r in data["results"]}
    # The base checkpoint fills BertModel; gradients run on BertForPreTraining over the same encoder.
    assert ("forward", "BertModel") in checks and ("grads", "BertForPreTraining") in checks
    assert data["environment"]["checks"] == ["forward", "grads"]  # cache does not apply to an encoder
    forward = [r for r in data["results"] if r["check"] == "forward"]
    assert len(forward) == len(BACKENDS) * (len(BACKENDS) - 1) // 2
    for r in forward:  # every hidden state and the pooler, each within a few ulps of fp32 noise
        paths = {t["path"] for t in r["tensors"]}
        assert {"last_hidden_state", "pooler_output", "hidden_states.6"} <= paths
        assert max(t["max_abs"] for t in r["tensors"]) <= 1e-5
    assert "parity: PASS" in captured.out and 'failures="0"' in (tmp_path / "r.xml").read_text()


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.skipif(suite.ORACLE not in WITH_ORACLE or not BACKENDS,
                    reason=missing_reason("the HF oracle (transformers) and a backend"))
def test_minilm_with_a_new_head_matches_the_oracle(minilm_dir, tmp_path):
    """Every backend against transformers' own BERT on the real checkpoint: outputs, and encoder gradients
    through a classification head seeded identically everywhere."""
    code = main(["parity", minilm_dir, "--backends", ",".join(WITH_ORACLE), "--heads",
                 "BertModel,BertForSequenceClassification", "--seq", "12", "--quiet",
                 "--report", str(tmp_path / "r.json")])
    data = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, [r for r in data["results"] if not r["passed"]]
    oracle_pairs = {(r["check"], r["model_class"]) for r in data["results"] if suite.ORACLE in r["pair"]}
    assert {("forward", "BertModel"), ("grads", "BertForSequenceClassification")} <= oracle_pairs
