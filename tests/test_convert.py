"""``bertrio convert``: every pair of formats is lossless (file bytes), bad input exits 2 and writes nothing,
DST is replaced only with --overwrite, config and tokenizer files travel."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from bert_common import formats, testing
from bert_common.checkpoint import save_checkpoint
from bert_common.cli import main
from bert_common.convert import convert_checkpoint
from bert_common.weights import HEADS

ALL = ("safetensors", "pytorch", "tf-h5", "flax-msgpack", "google-ckpt")
NEEDS = {"pytorch": "torch", "tf-h5": "h5py", "flax-msgpack": "msgpack", "google-ckpt": "tensorflow"}


def config_for(cls: str):
    return testing.tiny_config(num_labels=2 if cls == "BertForQuestionAnswering" else 3)


def source(tmp_path, cls: str, dtype=np.float32, seed: int = 0):
    """A canonical checkpoint dir (config.json, model.safetensors, vocab.txt) for ``cls``."""
    cfg = config_for(cls)
    state = {k: v.astype(dtype) for k, v in testing.random_weights(cfg, cls, seed=seed).items()}
    d = tmp_path / f"src-{cls}-{np.dtype(dtype).name}"
    save_checkpoint(d, cfg, state, architectures=[cls])
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["fp32", "bf16"])
def test_every_pair_of_formats_is_bitwise(tmp_path, dtype):
    """safetensors -> A -> B -> safetensors is lossless for every ordered pair (A, B) and every head:
    B's tensors read back bitwise equal to the source, and each A -> safetensors file is byte-identical
    to the original model.safetensors (so the last hop adds nothing either)."""
    for fmt in ALL[1:]:
        pytest.importorskip(NEEDS[fmt])
    for cls in HEADS:
        src = source(tmp_path, cls, dtype)
        original = (src / "model.safetensors").read_bytes()
        ref, _ = formats.read_weights(str(src))
        first = {}
        for a in ALL:
            first[a] = tmp_path / f"{cls}-{a}"
            convert_checkpoint(src, first[a], to=a)
        for a in ALL:
            for b in ALL:
                mid = tmp_path / f"{cls}-{a}-{b}"
                summary = convert_checkpoint(first[a], mid, to=b)
                assert summary.tensors == len(ref)
                if b == "safetensors":
                    assert (mid / "model.safetensors").read_bytes() == original, (cls, a)
                    continue
                back, fmt = formats.read_weights(str(mid))
                assert fmt == b and list(back) == list(ref), (cls, a, b)
                for k in ref:
                    assert back[k].dtype == ref[k].dtype and back[k].tobytes() == ref[k].tobytes(), (cls, a, b, k)


def test_cli_summary_config_and_tokenizer_travel(tmp_path, capsys):
    pytest.importorskip("msgpack")
    src = source(tmp_path, "BertForMaskedLM")
    dst = tmp_path / "out"
    assert main(["convert", str(src), str(dst), "--to", "flax-msgpack"]) == 0
    out = capsys.readouterr().out
    cfg = config_for("BertForMaskedLM")
    n_params = sum(int(np.prod(s)) for s in
                   __import__("bert_common.weights", fromlist=["x"]).canonical_shapes(cfg, "BertForMaskedLM").values())
    assert f"{n_params:,} parameters" in out and "safetensors -> flax-msgpack" in out
    assert sorted(os.listdir(dst)) == ["config.json", "flax_model.msgpack", "vocab.txt"]
    assert (dst / "vocab.txt").read_text() == "[PAD]\n[UNK]\nhello\n"
    assert json.loads((dst / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    # no temporary directories left beside DST
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_existing_dst_needs_overwrite(tmp_path, capsys):
    src = source(tmp_path, "BertModel")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(src), str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(os.listdir(dst)) == ["keep.txt"]
    assert main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors", "vocab.txt"]


@pytest.mark.parametrize("argv, message", [
    (["--to", "onnx"], "--to 'onnx' is not one of"),
    (["--shard-size", "lots"], "shard size 'lots'"),
    (["--to", "google-ckpt", "--shard-size", "1MB"], "--shard-size '1MB' applies to"),
    (["--model-class", "BertForEverything"], "model_class='BertForEverything'"),
    (["--config", "/nonexistent/bert_config.json"], "--config"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    src = source(tmp_path, "BertModel")
    dst = tmp_path / "out"
    assert main(["convert", str(src), str(dst), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not dst.exists()


def test_bad_dtype_is_refused_by_argparse(tmp_path):
    src = source(tmp_path, "BertModel")
    assert main(["convert", str(src), str(tmp_path / "out"), "--dtype", "int8"]) == 2
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_the_config_write_nothing(tmp_path, capsys):
    src = source(tmp_path, "BertModel")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    bad = tmp_path / "bad_config.json"
    bad.write_text(json.dumps(cfg))
    assert main(["convert", str(src), str(tmp_path / "out"), "--config", str(bad)]) == 2
    assert "encoder.layer.2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ALL)
def test_truncated_source_writes_nothing(tmp_path, capsys, fmt):
    if fmt in NEEDS:
        pytest.importorskip(NEEDS[fmt])
    src = source(tmp_path, "BertForPreTraining")
    mid = tmp_path / "mid"
    convert_checkpoint(src, mid, to=fmt)
    weight = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin", "tf-h5": "tf_model.h5",
              "flax-msgpack": "flax_model.msgpack", "google-ckpt": "bert_model.ckpt.data-00000-of-00001"}[fmt]
    data = (mid / weight).read_bytes()
    (mid / weight).write_bytes(data[: len(data) // 2])
    assert main(["convert", str(mid), str(tmp_path / "out")]) == 2
    assert "bertrio convert: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dtype_cast_and_sharding(tmp_path):
    pytest.importorskip("torch")
    src = source(tmp_path, "BertForSequenceClassification")
    s = convert_checkpoint(src, tmp_path / "bf16", dtype="bfloat16", to="pytorch", shard_size="10KB")
    assert "pytorch_model.bin.index.json" in s.files and sum(f.endswith(".bin") for f in s.files) > 2
    state, fmt = formats.read_weights(str(tmp_path / "bf16"))
    ref, _ = formats.read_weights(str(src))
    assert fmt == "pytorch" and list(state) == list(ref)
    for k in ref:  # round-to-nearest-even fp32 -> bf16, as ml_dtypes casts
        assert state[k].dtype == np.dtype(ml_dtypes.bfloat16)
        assert state[k].tobytes() == ref[k].astype(ml_dtypes.bfloat16).tobytes(), k
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert s.parameters == sum(a.size for a in ref.values())


def test_google_prefix_source_with_bert_config(tmp_path):
    """SRC as a checkpoint prefix whose directory holds only bert_config.json (Google's layout)."""
    pytest.importorskip("tensorflow")
    src = source(tmp_path, "BertForPreTraining")
    g = tmp_path / "google"
    convert_checkpoint(src, g, to="google-ckpt")
    os.remove(g / "config.json")
    assert sorted(os.listdir(g)) == ["bert_config.json", "bert_model.ckpt.data-00000-of-00001",
                                     "bert_model.ckpt.index", "vocab.txt"]
    back = tmp_path / "back"
    s = convert_checkpoint(g / "bert_model.ckpt", back)
    assert s.src_format == "google-ckpt" and s.model_class == "BertForPreTraining"
    assert (back / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (back / "vocab.txt").is_file()


def test_real_minilm_round_trip(tmp_path, minilm_dir):
    """The real all-MiniLM-L6-v2 checkpoint through h5 and back: tensors bitwise (its position_ids
    buffer is not a weight and is not carried by h5)."""
    pytest.importorskip("h5py")
    convert_checkpoint(minilm_dir, tmp_path / "h5", to="tf-h5")
    convert_checkpoint(tmp_path / "h5", tmp_path / "back")
    a, _ = formats.read_weights(minilm_dir)
    b, _ = formats.read_weights(str(tmp_path / "back"))
    assert set(a) - set(b) == {"embeddings.position_ids"}
    for k in b:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_progress_bar_reports_bytes_written(tmp_path, capsys, monkeypatch):
    pytest.importorskip("h5py")
    from bert_common import convert
    monkeypatch.setattr(convert, "PROGRESS_MIN_BYTES", 0)  # the tiny checkpoint counts as large
    src = source(tmp_path, "BertModel")
    s = convert.convert_checkpoint(src, tmp_path / "out", to="tf-h5", progress=True)
    err = capsys.readouterr().err
    assert "writing tf-h5" in err and "100%" in err
    assert s.bytes == os.path.getsize(tmp_path / "out" / "tf_model.h5")


def test_model_class_that_does_not_fit_exits_2(tmp_path, capsys):
    pytest.importorskip("h5py")
    src = source(tmp_path, "BertForSequenceClassification")  # classifier [3, H]
    convert_checkpoint(src, tmp_path / "h5", to="tf-h5")
    # multiple choice has the same names but a [1, H] classifier: the shapes are refused
    assert main(["convert", str(tmp_path / "h5"), str(tmp_path / "out"),
                 "--model-class", "BertForMultipleChoice"]) == 2
    assert "classifier.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(tmp_path / "h5"), str(tmp_path / "out"),
                 "--model-class", "BertForSequenceClassification"]) == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_legacy_pickle_pytorch_file_reads(tmp_path):
    """Pre-1.6 torch.save files (not zip) read too (no memory map), bf16 included."""
    torch = pytest.importorskip("torch")
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}
    torch.save(t, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    state, fmt = formats.read_weights(str(tmp_path))
    assert fmt == "pytorch"
    np.testing.assert_array_equal(state["a"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
    assert state["b"].dtype == np.dtype(ml_dtypes.bfloat16) and state["b"].astype(np.float32).tolist() == [1.5, -2.0]


@pytest.mark.parametrize("fmt", ["tf-h5", "flax-msgpack", "pytorch"])
def test_cli_shard_size_for_every_shardable_format(tmp_path, fmt):
    """``--shard-size`` splits every shardable format HF's way; converting back is byte-identical."""
    pytest.importorskip(NEEDS[fmt])
    src = source(tmp_path, "BertForPreTraining")
    for size in ("8KB", "25KB"):
        mid, back = tmp_path / f"{fmt}-{size}", tmp_path / f"back-{size}"
        assert main(["convert", str(src), str(mid), "--to", fmt, "--shard-size", size]) == 0
        index = json.loads(next(mid.glob("*.index.json")).read_text())
        assert len(set(index["weight_map"].values())) > 2
        assert main(["convert", str(mid), str(back)]) == 0
        assert (back / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_source_without_config_needs_config_flag(tmp_path, capsys):
    """An output without config.json is not a checkpoint: convert refuses unless --config is given."""
    src = source(tmp_path, "BertModel")
    cfg = tmp_path / "elsewhere.json"
    os.replace(src / "config.json", cfg)
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no config.json or bert_config.json" in err and "--config" in err
    assert not (tmp_path / "out").exists()
    assert main(["convert", str(src), str(tmp_path / "out"), "--config", str(cfg)]) == 0
    assert (tmp_path / "out" / "config.json").is_file()


def test_empty_existing_dst_is_fine_and_counts_match_info(tmp_path, capsys):
    src = source(tmp_path, "BertForPreTraining")
    dst = tmp_path / "out"
    dst.mkdir()
    assert main(["convert", str(src), str(dst), "--to", "flax-msgpack"]) == 0
    converted = capsys.readouterr().out
    assert (dst / "flax_model.msgpack").is_file()
    assert main(["info", str(dst)]) == 0
    info = capsys.readouterr().out
    n_info = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("tensors")))
    assert f": {n_info} tensors," in converted
    (dst / "keep.txt").write_text("not empty")
    assert main(["convert", str(src), str(dst)]) == 2
    assert "not empty" in capsys.readouterr().err
