"""The README's main job: `bertrio parity` on the embedded real checkpoint, all installed backends."""
import json

import pytest

from bert_common.cli import main
from conformance import suite

BACKENDS = suite.available_backends(suite.ALL_BACKENDS)


@pytest.mark.slow
@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs two backends")
def test_parity_on_minilm_passes_and_reports(minilm_dir, tmp_path, capsys):
    code = main(["parity", minilm_dir, "--report", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"),
                 "--markdown", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((tmp_path / "r.json").read_text())
    checks = {(r["check"], r["model_class"]) for r in data["results"]}
    # The base checkpoint fills BertModel; gradients run on BertForPreTraining over the same encoder.
    assert ("forward", "BertModel") in checks and ("grads", "BertForPreTraining") in checks
    forward = [r for r in data["results"] if r["check"] == "forward"]
    assert len(forward) == len(BACKENDS) * (len(BACKENDS) - 1) // 2
    for r in forward:  # every hidden state and the pooler, each within the fp32 table row
        paths = {t["path"] for t in r["tensors"]}
        assert {"last_hidden_state", "pooler_output", "hidden_states.6"} <= paths
        assert max(t["max_abs"] for t in r["tensors"]) <= 1e-5
    assert "parity: PASS" in out and 'failures="0"' in (tmp_path / "r.xml").read_text()
