"""Import hygiene, backend selection, outputs, validation messages and the `bertrio info` CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bert_common
from bert_common import backend
from bert_common.cli import main
from bert_common.outputs import OUTPUT_OF, output_for
from bert_common.testing import tiny_config
from bert_common.validation import check_inputs

FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "keras", "tokenizers")


def _imported_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(m for m in "
                          f"{FRAMEWORKS!r} if m in sys.modules))"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bert_common_imports_no_framework():
    assert _imported_after("import bert_common, bert_common.config, bert_common.weights, bert_common.checkpoint, "
                           "bert_common.pretrained, bert_common.cli, bert_common.auto, bert_common.formats, "
                           "bert_common.generation, bert_common.validation, bert_common.testing") == []


def test_env_var_selects_backend_and_names_installed(monkeypatch):
    monkeypatch.setattr(backend, "_selected", None)
    monkeypatch.setenv("BERT_BACKEND", "mxnet")
    with pytest.raises(ValueError) as e:
        backend.get_backend()
    assert "BERT_BACKEND='mxnet'" in str(e.value) and "installed:" in str(e.value)
    monkeypatch.setenv("BERT_BACKEND", "jax")  # alias
    assert backend.get_backend() == "flax"
    monkeypatch.delenv("BERT_BACKEND")
    assert backend.get_backend() == backend.installed_backends()[0]


def test_set_backend_wins_and_missing_framework_is_named(monkeypatch):
    monkeypatch.setattr(backend, "_selected", None)
    monkeypatch.setenv("BERT_BACKEND", "tf")
    bert_common.set_backend("torch")
    assert backend.get_backend() == "torch"
    monkeypatch.setattr(backend, "installed_backends", lambda: ["torch"])
    with pytest.raises(ImportError) as e:
        bert_common.set_backend("flax")
    assert "needs jax, flax, optax" in str(e.value) and "installed backends: ['torch']" in str(e.value)


def test_auto_resolves_the_selected_backend_class(monkeypatch):
    pytest.importorskip("torch")
    import bert_torch
    if not hasattr(bert_torch, "BertModel"):
        pytest.skip("bert_torch not built yet")
    monkeypatch.setattr(backend, "_selected", None)
    monkeypatch.setenv("BERT_BACKEND", "torch")
    from bert_common import auto
    assert auto.BertForSequenceClassification is bert_torch.BertForSequenceClassification
    with pytest.raises(AttributeError):
        auto.NotAClass


def test_outputs_behave_like_hf():
    out = output_for("BertForQuestionAnswering", start_logits=1, end_logits=2, loss=None)
    assert out.start_logits == 1 and out["end_logits"] == 2 and out.loss is None and "loss" not in out
    assert out.to_tuple() == (1, 2) and out[0] == 1
    with pytest.raises(TypeError, match="has no field"):
        output_for("BertModel", logits=1)
    assert set(OUTPUT_OF) == set(bert_common.weights.HEADS)


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_ids=np.array([[1, 99]])), "input_ids contains 99, outside the valid range [0, 99) set by config.vocab_size=99"),
    (dict(input_ids=np.array([[-1, 2]])), "input_ids contains -1, outside the valid range [0, 99)"),
    (dict(input_ids=np.array([[1, 2]]), token_type_ids=np.array([[0, 3]])),
     "token_type_ids contains 3, outside the valid range [0, 3) set by config.type_vocab_size=3"),
    (dict(input_ids=np.ones((1, 65), np.int64)),
     "input_ids has sequence length 65 (+ 0 cached) = more than config.max_position_embeddings=64"),
    (dict(input_ids=np.ones((2, 5), np.int64), attention_mask=np.ones((2, 4))),
     "attention_mask has shape (2, 4) but must have shape (2, 5)"),
    (dict(input_ids=np.ones((1, 3), np.int64), past_length=62),
     "input_ids has sequence length 3 (+ 62 cached)"),
    (dict(input_ids=np.ones((1, 3)),), "input_ids must hold integers"),
])
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as e:
        check_inputs(tiny_config(), **kwargs)
    assert message in str(e.value)


def test_cli_info_on_real_checkpoint(minilm_dir, capsys):
    assert main(["info", minilm_dir]) == 0
    out = capsys.readouterr().out
    assert "layers                     6" in out and "hidden size                384" in out
    assert "22,713,216" in out and "safetensors" in out and "BertModel" in out


def test_cli_info_bad_input_exits_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 10}))
    assert main(["info", str(tmp_path)]) == 2
    assert "hidden_size=10" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert main(["info", str(tmp_path)]) == 2
    assert "no weights found" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert os.listdir(tmp_path) == ["config.json"]  # nothing written


def test_console_script_and_module_entry_point(minilm_dir):
    r = subprocess.run([sys.executable, "-m", "bert_common", "info", minilm_dir], capture_output=True, text=True)
    assert r.returncode == 0 and "parameters" in r.stdout
