"""``bertrio export``: ONNX (torch), SavedModel (TF) and StableHLO (Flax) artifacts, each checked by the
parity suite's artifact adapters against its source backend within the fp32 rule.

Every head on a tiny config goes through the adapters (export, reload in the artifact's own runtime,
forward check); the real MiniLM goes through the command itself, whose verification is the same check.
Artifacts of MiniLM are written once per module and shared.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bert_common.checkpoint import save_checkpoint
from bert_common.cli import main
from bert_common.cli.export import FORMATS, artifact_spec, output_names, read_sidecar
from bert_common.testing import missing_reason, random_weights, tiny_config
from bert_common.weights import HEADS
from conformance.cases import tiny_case
from conformance.suite import Runner, adapter, available_backends

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


def _need(*names: str) -> None:
    """Skip (a failure under BERTRIO_NO_SKIP) unless every named adapter is installed."""
    missing = [n for n in names if not available_backends([n])]
    if missing:
        pytest.skip(missing_reason(", ".join(missing)))


def _need_format(fmt: str) -> None:
    # The source backend writes the artifact; torch gives the float64 truth every verdict is scaled by.
    _need(fmt, FORMATS[fmt]["backend"], "torch")


def _forward_results(fmt: str, case):
    """The suite's forward check of the artifact against its source backend (fp32 rule)."""
    source = FORMATS[fmt]["backend"]
    runner = Runner([source, fmt])
    return runner.for_check("forward").forward(case)


# ------------------------------------------------------------------ every head, tiny config, adapters
def _variant(head: str) -> str:
    return "decoder" if head == "BertLMHeadModel" else "absolute"  # causal mask exported too


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_exports_and_matches_its_source(fmt, head):
    _need_format(fmt)
    case = tiny_case(_variant(head), head)
    results = _forward_results(fmt, case)
    assert len(results) == 1
    r = results[0]
    assert r.pair == (fmt, FORMATS[fmt]["backend"])
    assert r.passed, r.message()
    # The pair compared exactly the head's exported fields, each with real values.
    assert [d.path for d in r.diffs] == output_names(head)
    assert all(d.ref_max > 0 for d in r.diffs)


def test_artifact_outputs_carry_hf_names():
    assert output_names("BertModel") == ["last_hidden_state", "pooler_output"]
    assert output_names("BertForPreTraining") == ["prediction_logits", "seq_relationship_logits"]
    assert output_names("BertForQuestionAnswering") == ["start_logits", "end_logits"]
    assert output_names("BertForSequenceClassification") == ["logits"]
    spec = artifact_spec("BertForMultipleChoice", "onnx")
    assert list(spec["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert spec["inputs"]["input_ids"] == ["batch_size", "num_choices", "sequence_length"]
    assert artifact_spec("BertModel", "stablehlo")["input_dtype"] == "int32"


def test_a_wrong_artifact_fails_the_check(tmp_path):
    """The adapter runs the file it is given: an artifact of other weights fails the forward check."""
    _need_format("stablehlo")
    from conformance.adapters import artifact
    case = tiny_case("absolute", "BertForSequenceClassification")
    other = tiny_case("absolute", "BertForSequenceClassification", seed=7)
    h = adapter("stablehlo").build(other.model_class, other.config, other.state)
    artifact.use_artifact(h.path)
    try:
        [r] = _forward_results("stablehlo", case)
    finally:
        artifact.clear_artifacts()
    assert not r.passed and r.first_failure.path == "logits"


# ------------------------------------------------------------------ usage errors (nothing loaded)
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    cfg = tiny_config("absolute")
    path = str(tmp_path_factory.mktemp("tiny") / "ckpt")
    save_checkpoint(path, cfg, random_weights(cfg, "BertModel"))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--to", "stablehlo", "--opset", "17"], "--opset does not apply to --to stablehlo"),
    (["--to", "onnx", "--with-tokenizer"], "--with-tokenizer does not apply to --to onnx"),
    (["--to", "onnx", "--backend", "tf"], "onnx is exported from the torch backend only"),
    (["--to", "onnx", "--head", "BertForEverything"], "'BertForEverything' is not one of"),
])
def test_usage_errors_exit_2_and_write_nothing(tiny_ckpt, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["export", tiny_ckpt, str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unsupported_head_format_pair_names_both(tmp_path, capsys, minilm_dir):
    out = tmp_path / "out"
    rc = main(["export", minilm_dir, str(out), "--to", "saved-model", "--head", "BertForMultipleChoice",
               "--with-tokenizer"])
    err = capsys.readouterr().err
    assert rc == 2 and "BertForMultipleChoice" in err and "saved-model" in err and not out.exists()


def test_cross_attention_config_is_refused(tmp_path, capsys):
    cfg = tiny_config("cross_attention")
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, cfg, random_weights(cfg, "BertModel"))
    assert main(["export", ckpt, str(tmp_path / "out"), "--to", "stablehlo"]) == 2
    err = capsys.readouterr().err
    assert "BertModel" in err and "stablehlo" in err and "encoder_hidden_states" in err


# ------------------------------------------------------------------ MiniLM through the command
@pytest.fixture(scope="module")
def minilm_artifacts(tmp_path_factory, request) -> dict:
    """{format: artifact directory} of MiniLM's BertModel, each written (and verified) by the command;
    the SavedModel with the in-graph tokenizer."""
    minilm = request.getfixturevalue("minilm_dir")
    root = tmp_path_factory.mktemp("minilm")
    out = {}
    for fmt in FORMATS:
        if len(available_backends([fmt, FORMATS[fmt]["backend"], "torch"])) < 3:
            continue
        extra = ["--with-tokenizer"] if fmt == "saved-model" else []
        rc = main(["export", minilm, str(root / fmt), "--to", fmt, *extra])
        out[fmt] = (rc, str(root / fmt))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_minilm_export_is_verified_and_complete(minilm_artifacts, fmt, minilm_dir):
    _need_format(fmt)
    rc, path = minilm_artifacts[fmt]
    assert rc == 0
    side = read_sidecar(path)
    assert side["format"] == fmt and side["head"] == "BertModel" and side["dtype"] == "float32"
    assert side["outputs"] == ["last_hidden_state", "pooler_output"]
    assert os.path.exists(os.path.join(path, side["file"]))
    for name in ("config.json", "vocab.txt"):
        with open(os.path.join(path, name), "rb") as a, open(os.path.join(minilm_dir, name), "rb") as b:
            assert a.read() == b.read()


@pytest.mark.slow
def test_parity_command_checks_all_three_artifacts(minilm_artifacts, minilm_dir, capsys):
    """``bertrio parity --backends torch,onnx,saved-model,stablehlo`` with the written artifacts: every
    artifact pair on the same tolerance table."""
    for fmt in FORMATS:
        _need_format(fmt)
    argv = ["parity", minilm_dir, "--backends", "torch,onnx,saved-model,stablehlo", "--heads", "BertModel",
            "--checks", "forward"]
    for fmt in FORMATS:
        argv += ["--artifact", minilm_artifacts[fmt][1]]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for pair in ("onnx vs torch", "saved-model vs torch", "stablehlo vs torch", "stablehlo vs onnx"):
        assert pair in table
    assert "6 of 6 checks passed" in table


def test_artifacts_take_part_in_the_forward_check_only():
    runner = Runner(["torch", "onnx", "saved-model", "stablehlo"], truth="torch")
    assert runner.for_check("forward").backends == ["torch", "onnx", "saved-model", "stablehlo"]
    for check in ("grads", "adamw", "cache", "train_mode"):
        assert runner.for_check(check).backends == ["torch"]


@pytest.mark.slow
def test_stablehlo_runs_in_a_process_without_bertrio(minilm_artifacts, minilm_dir, tmp_path):
    """Another process deserialises the module with only jax and numpy imported, at a new batch and
    sequence length, and gets what the torch model computes."""
    _need_format("stablehlo")
    path = minilm_artifacts["stablehlo"][1]
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 1000, size=(3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 8:] = 0
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
    script = f"""
import sys, json, numpy as np, jax
side = json.load(open({os.path.join(path, 'export.json')!r}))
fn = jax.export.deserialize(bytearray(open({os.path.join(path, 'model.stablehlo')!r}, 'rb').read()))
x = np.load({str(tmp_path / 'in.npz')!r})
out = fn.call(*(x[n] for n in side["inputs"]))
np.savez({str(tmp_path / 'out.npz')!r}, **{{k: np.asarray(v) for k, v in out.items()}})
ours = sorted(m for m in sys.modules if m.split('.')[0] in ('bert_common', 'bert_flax', 'flax', 'conformance', 'torch'))
print(json.dumps(ours))
"""
    env = {**os.environ, "PYTHONPATH": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    got = np.load(tmp_path / "out.npz")
    torch_ad = adapter("torch")
    from bert_common.checkpoint import load_checkpoint
    cfg, state, _ = load_checkpoint(minilm_dir)
    ref = torch_ad.forward(torch_ad.build("BertModel", cfg, state),
                           {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                            "token_type_ids": np.zeros((3, 11), np.int64)}, output_attentions=False)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got["last_hidden_state"][keep], ref["last_hidden_state"][keep], atol=2e-5)
    np.testing.assert_allclose(got["pooler_output"], ref["pooler_output"], atol=2e-5)


@pytest.mark.slow
def test_saved_model_text_signature_and_saved_model_cli(minilm_artifacts, minilm_dir):
    """Strings in, outputs out: the in-graph tokenizer's signature equals the id signature fed by the
    Python tokenizer; ``saved_model_cli show --all`` lists both signatures."""
    _need_format("saved-model")
    import tensorflow as tf

    from bert_common import BertTokenizerFast
    path = os.path.join(minilm_artifacts["saved-model"][1], "saved_model")
    loaded = tf.saved_model.load(path)
    texts = ["Exported artifacts are checked like a fourth backend.", "Short one."]
    by_text = loaded.signatures["serving_text"](text=tf.constant(texts))
    enc = BertTokenizerFast.from_pretrained(minilm_dir)(texts, padding=True, return_tensors="np")
    by_ids = loaded.signatures["serving_default"](**{k: tf.constant(np.asarray(enc[k], np.int64))
                                                     for k in ("input_ids", "attention_mask", "token_type_ids")})
    keep = np.asarray(enc["attention_mask"], bool)
    np.testing.assert_allclose(by_text["last_hidden_state"].numpy()[keep], by_ids["last_hidden_state"].numpy()[keep],
                               atol=1e-5)
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for word in ("serving_default", "serving_text", "input_ids", "token_type_ids", "last_hidden_state", "text"):
        assert word in proc.stdout


def test_onnx_fusions_keep_the_numbers(tmp_path):
    """--optimize: ONNX Runtime's BERT fusions rewrite the graph and stay within the fp32 rule."""
    _need_format("onnx")
    import onnx

    from bert_common.cli.export import export_artifact
    case = tiny_case("absolute", "BertModel")
    model = adapter("torch").build(case.model_class, case.config, case.state)
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    plain.mkdir()
    fused.mkdir()
    export_artifact(model, str(plain), "onnx")
    side = export_artifact(model, str(fused), "onnx", optimize=True)
    assert side["optimized"] is True

    def ops(p):
        return {n.op_type for n in onnx.load(str(p / "model.onnx")).graph.node}
    assert ops(fused) != ops(plain)  # the fusions rewrote something
    from conformance.adapters import artifact
    artifact.use_artifact(str(fused))
    try:
        [r] = _forward_results("onnx", case)
    finally:
        artifact.clear_artifacts()
    assert r.passed, r.message()
