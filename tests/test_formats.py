"""Weight file formats: round trips (fp32 and bf16, every head), names as the reference tools spell them,
refusal of unsafe, truncated and inconsistent files."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from bert_common import formats, testing
from bert_common.formats import CheckpointError
from bert_common.weights import HEADS, WeightMappingError

LEGACY = ("pytorch", "tf-h5", "flax-msgpack", "google-ckpt")
NEEDS = {"pytorch": "torch", "tf-h5": "h5py", "flax-msgpack": "msgpack", "google-ckpt": "tensorflow"}
WEIGHT_FILE = {"pytorch": "pytorch_model.bin", "tf-h5": "tf_model.h5", "flax-msgpack": "flax_model.msgpack",
               "google-ckpt": "bert_model.ckpt.data-00000-of-00001", "safetensors": "model.safetensors"}


def config_for(cls: str):
    # QA heads have two outputs (start, end); Google's SQuAD layer is [2, H].
    return testing.tiny_config(num_labels=2 if cls == "BertForQuestionAnswering" else 3)


def weights(cls: str, dtype=np.float32, seed: int = 0):
    return {k: v.astype(dtype) for k, v in testing.random_weights(config_for(cls), cls, seed=seed).items()}


def assert_bitwise(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", LEGACY)
def test_round_trip_every_head_bitwise(tmp_path, fmt, dtype):
    pytest.importorskip(NEEDS[fmt])
    for cls in HEADS:
        state = weights(cls, dtype)
        d = tmp_path / cls
        d.mkdir()
        files = formats.write_weights(str(d), config_for(cls), state, fmt)
        assert all((d / f).is_file() for f in files)
        assert formats.detect_formats(str(d)) == [fmt]
        back, got = formats.read_weights(str(d), config_for(cls))
        assert got == fmt
        assert_bitwise(back, state)


def test_detect_formats_names_and_patterns(tmp_path):
    for name in ("training_args.bin", "notes.h5"):  # HF dirs carry these; they are not weights
        (tmp_path / name).write_bytes(b"x")
    assert formats.detect_formats(str(tmp_path)) == []
    (tmp_path / "model.ckpt-1000.index").write_bytes(b"")
    assert formats.detect_formats(str(tmp_path)) == ["google-ckpt"]
    assert formats.detect_formats(str(tmp_path / "model.ckpt-1000")) == ["google-ckpt"]
    assert formats.detect_formats(str(tmp_path / "x.msgpack")) == ["flax-msgpack"]
    assert formats.detect_formats(str(tmp_path / "pytorch_model.bin.index.json")) == ["pytorch"]
    assert formats.detect_formats(str(tmp_path / "model.safetensors.index.json")) == ["safetensors"]


def test_scheme_readers_need_a_config(tmp_path):
    pytest.importorskip("msgpack")
    cls = "BertModel"
    formats.write_weights(str(tmp_path), config_for(cls), weights(cls), "flax-msgpack")
    with pytest.raises(ValueError, match="needs the model config"):
        formats.read_weights(str(tmp_path))
    config_for(cls).save_pretrained(str(tmp_path))  # config.json beside the file is found
    assert formats.read_weights(str(tmp_path))[1] == "flax-msgpack"


def test_head_is_inferred_and_pooler_optional(tmp_path):
    """A file holds one class's names: the reader picks the class (and the pooler choice) that fits."""
    pytest.importorskip("h5py")
    cfg = config_for("BertModel")
    no_pool = testing.random_weights(cfg, "BertModel", add_pooling_layer=False)
    formats.write_weights(str(tmp_path), cfg, no_pool, "tf-h5")
    back, _ = formats.read_weights(str(tmp_path), cfg)
    assert_bitwise(back, no_pool)
    # ...and a config that disagrees (3 layers) is refused naming the missing tensors.
    with pytest.raises(WeightMappingError, match="encoder.layer.2"):
        formats.read_weights(str(tmp_path), cfg.replace(num_hidden_layers=3))
    # An explicit model class that does not fit is refused too.
    with pytest.raises(WeightMappingError):
        formats.read_weights(str(tmp_path), cfg, model_class="BertForMaskedLM")


def test_writer_refuses_tensors_of_no_class(tmp_path):
    pytest.importorskip("h5py")
    cfg = config_for("BertModel")
    state = testing.random_weights(cfg, "BertModel")
    state["encoder.layer.0.extra.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(WeightMappingError, match="extra"):
        formats.write_weights(str(tmp_path), cfg, state, "tf-h5")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- names
def test_google_names_and_layouts(tmp_path):
    tf = pytest.importorskip("tensorflow")
    cls = "BertForPreTraining"
    state = weights(cls)
    formats.write_weights(str(tmp_path), config_for(cls), state, "google-ckpt")
    reader = tf.train.load_checkpoint(str(tmp_path / "bert_model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    H, V = 32, 99
    expect = {  # Google's modeling.py / run_pretraining.py variable names and shapes
        "bert/embeddings/word_embeddings": [V, H],
        "bert/embeddings/LayerNorm/gamma": [H],
        "bert/encoder/layer_1/attention/self/query/kernel": [H, H],
        "bert/encoder/layer_0/intermediate/dense/kernel": [H, 37],
        "bert/pooler/dense/kernel": [H, H],
        "cls/predictions/output_bias": [V],
        "cls/predictions/transform/LayerNorm/beta": [H],
        "cls/seq_relationship/output_weights": [2, H],
        "cls/seq_relationship/output_bias": [2],
    }
    for name, shape in expect.items():
        assert shapes[name] == shape, name
    np.testing.assert_array_equal(reader.get_tensor("bert/encoder/layer_0/intermediate/dense/kernel"),
                                  state["bert.encoder.layer.0.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(reader.get_tensor("cls/seq_relationship/output_weights"),
                                  state["cls.seq_relationship.weight"])
    cfg = json.loads((tmp_path / "bert_config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == V


def test_google_skips_optimizer_slots_and_maps_classifier(tmp_path):
    tf = pytest.importorskip("tensorflow")
    cls = "BertForSequenceClassification"
    cfg = config_for(cls)
    state = weights(cls)
    from bert_common.weights import to_scheme
    tensors = to_scheme(state, "google_ckpt")
    assert "output_weights" in tensors and tensors["output_weights"].shape == (3, 32)  # run_classifier.py
    extra = {f"{n}/adam_m": np.zeros_like(a) for n, a in list(tensors.items())[:3]}
    extra.update({f"{n}/adam_v": np.ones_like(a) for n, a in list(tensors.items())[:3]})
    extra["global_step"] = np.array(7, np.int64)
    allt = {**tensors, **extra}
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "model.ckpt-7"), tensor_names=list(allt),
                      shape_and_slices=[""] * len(allt), tensors=[tf.constant(v) for v in allt.values()])
    cfg.save_pretrained(str(tmp_path))
    back, fmt = formats.read_weights(str(tmp_path), cfg)
    assert fmt == "google-ckpt"
    assert_bitwise(back, state)


def test_h5_layout_matches_hf(tmp_path):
    """Group / dataset / attribute layout recorded from transformers 4.57.1 + tf-keras 2.21."""
    h5py = pytest.importorskip("h5py")
    cls = "BertForMaskedLM"
    formats.write_weights(str(tmp_path), config_for(cls), weights(cls), "tf-h5")
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:
        assert [x.decode() for x in f.attrs["layer_names"]] == ["bert", "mlm___cls"]
        assert f.attrs["backend"] == "tensorflow"
        mlm = [x.decode() for x in f["mlm___cls"].attrs["weight_names"]]
        assert set(mlm[:5]) == {f"tf_bert_for_masked_lm/mlm___cls/predictions/{n}:0" for n in
                                ("bias", "transform/dense/kernel", "transform/dense/bias", "transform/LayerNorm/gamma",
                                 "transform/LayerNorm/beta")}
        # the head lists the shared embedding layer too, as Keras does for the tied decoder
        assert "tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight:0" in mlm
        bert = [x.decode() for x in f["bert"].attrs["weight_names"]]
        assert set(bert[:3]) == {"tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight:0",
                                 "tf_bert_for_masked_lm/bert/embeddings/position_embeddings/embeddings:0",
                                 "tf_bert_for_masked_lm/bert/embeddings/token_type_embeddings/embeddings:0"}
        k = f["bert"]["tf_bert_for_masked_lm/bert/encoder/layer_._1/intermediate/dense/kernel:0"]
        assert k.shape == (32, 37)


def test_h5_chunked_attributes_are_read(tmp_path):
    """Keras splits attribute arrays over 64 KiB into name0, name1, ...; both spellings read the same."""
    h5py = pytest.importorskip("h5py")
    from bert_common.formats import tf_h5
    names = [f"scope/layer/w{i:05d}/kernel:0" for i in range(3000)]  # ~90 KB of names
    with h5py.File(tmp_path / "a.h5", "w") as f:
        tf_h5._write_attr_list(f, "weight_names", names)
        assert "weight_names" not in f.attrs and "weight_names1" in f.attrs
        assert tf_h5._read_attr_list(f, "weight_names") == names


def test_msgpack_matches_flax_serialization(tmp_path):
    """Our msgpack codec and flax.serialization read each other's bytes, bf16 included."""
    serialization = pytest.importorskip("flax.serialization")
    from bert_common.formats import flax_msgpack
    cls = "BertForPreTraining"
    state = weights(cls, ml_dtypes.bfloat16)
    formats.write_weights(str(tmp_path), config_for(cls), state, "flax-msgpack")
    raw = (tmp_path / "flax_model.msgpack").read_bytes()
    tree = serialization.msgpack_restore(raw)
    kernel = np.asarray(tree["bert"]["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"])
    assert kernel.dtype == np.dtype(ml_dtypes.bfloat16)
    query = state["bert.encoder.layer.1.attention.self.query.weight"]
    assert kernel.tobytes() == np.ascontiguousarray(query.T).tobytes()
    assert raw == serialization.msgpack_serialize(tree)  # byte-identical to flax's own encoding
    # and flax's bytes (including a chunked array) decode with our reader
    flat = flax_msgpack.read_tensors(str(tmp_path))
    big = np.arange(10, dtype=np.float32)
    orig_limit = serialization.MAX_CHUNK_SIZE
    try:
        serialization.MAX_CHUNK_SIZE = 16  # force flax to chunk the 40-byte array
        (tmp_path / "c.msgpack").write_bytes(serialization.msgpack_serialize({"a": {"b": big}}))
    finally:
        serialization.MAX_CHUNK_SIZE = orig_limit
    got = flax_msgpack.load_file(str(tmp_path / "c.msgpack"))
    np.testing.assert_array_equal(got["a/b"], big)
    assert len(flat) == len(state)


# ---------------------------------------------------------------------------------------------- refusal
def _evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch = pytest.importorskip("torch")
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2), "x": Evil()}, path)


def test_pickle_that_runs_code_is_refused(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    d = tmp_path / "ckpt"
    d.mkdir()
    _evil_pickle(d / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match="code execution"):
        formats.read_weights(str(d))
    assert not marker.exists()


def test_missing_framework_error_names_the_extra(monkeypatch, tmp_path):
    import sys
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" fail as if not installed
    with pytest.raises(ImportError, match=r"pytorch format needs torch: pip install bertrio\[torch\]"):
        formats.read_weights(str(tmp_path))


@pytest.mark.parametrize("fmt", ["safetensors", *LEGACY])
def test_truncated_file_is_refused(tmp_path, fmt):
    pytest.importorskip(NEEDS.get(fmt, "numpy"))
    cls = "BertForMaskedLM"
    formats.write_weights(str(tmp_path), config_for(cls), weights(cls), fmt)
    config_for(cls).save_pretrained(str(tmp_path))
    f = tmp_path / WEIGHT_FILE[fmt]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError):
        formats.read_weights(str(tmp_path))


@pytest.mark.parametrize("fmt", ["safetensors", *LEGACY])
def test_corrupt_file_is_refused(tmp_path, fmt):
    """Flipped bytes inside a tensor (caught by checksums where the format has them) or the header."""
    pytest.importorskip(NEEDS.get(fmt, "numpy"))
    cls = "BertModel"
    formats.write_weights(str(tmp_path), config_for(cls), weights(cls), fmt)
    config_for(cls).save_pretrained(str(tmp_path))
    f = tmp_path / WEIGHT_FILE[fmt]
    data = bytearray(f.read_bytes())
    if fmt == "google-ckpt":  # data bytes: TF verifies CRC32C of every tensor
        data[len(data) // 2] ^= 0xFF
    else:  # the first bytes are each format's header / magic / structure
        data[:16] = b"\x00" * 16 if fmt != "flax-msgpack" else b"\xc1" * 16
    f.write_bytes(bytes(data))
    with pytest.raises((CheckpointError, ValueError)):
        formats.read_weights(str(tmp_path))


def test_inconsistent_sharded_pytorch_is_refused(tmp_path):
    pytest.importorskip("torch")
    cls = "BertModel"
    state = weights(cls)
    files = formats.write_weights(str(tmp_path), config_for(cls), state, "pytorch", shard_size=20_000)
    assert "pytorch_model.bin.index.json" in files and len(files) > 2
    back, _ = formats.read_weights(str(tmp_path))
    assert_bitwise(back, state)
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    first = next(k for k, f in index["weight_map"].items() if f != files[1])
    index["weight_map"][first] = files[1]  # the index now puts a tensor in the wrong shard
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="disagrees with the index"):
        formats.read_weights(str(tmp_path))


def test_msgpack_with_a_lying_array_record_is_refused(tmp_path):
    msgpack = pytest.importorskip("msgpack")
    payload = msgpack.packb(([99, 32], "float32", b"\x00" * 12), use_bin_type=True)  # 12 bytes, needs 12672
    tree = {"embeddings": {"word_embeddings": {"embedding": msgpack.ExtType(1, payload)}}}
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree))
    config_for("BertModel").save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="embeddings/word_embeddings/embedding.*needs 12672"):
        formats.read_weights(str(tmp_path))



def test_readers_import_only_what_their_format_needs(tmp_path):
    """h5 needs only h5py and msgpack only msgpack: no torch / tensorflow / jax in the process."""
    import subprocess
    import sys
    pytest.importorskip("h5py")
    pytest.importorskip("msgpack")
    cls = "BertForPreTraining"
    for fmt in ("tf-h5", "flax-msgpack"):
        (tmp_path / fmt).mkdir()
        formats.write_weights(str(tmp_path / fmt), config_for(cls), weights(cls), fmt)
        config_for(cls).save_pretrained(str(tmp_path / fmt))
    code = ("import sys; from bert_common import formats\n"
            f"for f in ('tf-h5', 'flax-msgpack'): assert len(formats.read_weights(r'{tmp_path}/' + f)[0]) > 40\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- sharding
SHARD_FILES = {"safetensors": ("model", ".safetensors"), "pytorch": ("pytorch_model", ".bin"),
               "tf-h5": ("tf_model", ".h5"), "flax-msgpack": ("flax_model", ".msgpack")}


@pytest.mark.parametrize("fmt", ["tf-h5", "flax-msgpack"])
def test_sharded_round_trip_every_head_bitwise(tmp_path, fmt):
    """HF-named shards + index at several sizes, every head, fp32 and bf16: bitwise back."""
    pytest.importorskip(NEEDS[fmt])
    stem, ext = SHARD_FILES[fmt]
    for cls in HEADS:
        for dtype in (np.float32, ml_dtypes.bfloat16):
            state = weights(cls, dtype)
            total = sum(a.nbytes for a in state.values())
            sizes = (4_000, 30_000, total // 2) if dtype == np.float32 else (total // 3,)
            for size in sizes:
                d = tmp_path / f"{cls}-{np.dtype(dtype).name}-{size}"
                d.mkdir()
                files = formats.write_weights(str(d), config_for(cls), state, fmt, shard_size=size)
                shards = [f for f in files if f.endswith(ext)]
                n = len(shards)
                assert n > 1 and files[-1] == f"{stem}{ext}.index.json", (cls, size, files)
                assert shards == [f"{stem}-{i:05d}-of-{n:05d}{ext}" for i in range(1, n + 1)]
                assert sorted(os.listdir(d)) == sorted(files)
                back, got = formats.read_weights(str(d), config_for(cls))
                assert got == fmt
                assert_bitwise(back, state)


def test_sharded_h5_follows_hf_layout(tmp_path):
    """transformers 4.57.1 ``tf_shard_checkpoint`` / ``save_pretrained``: the index maps full variable
    names (model scope included) to shard files, sorted, with ``metadata.total_size``; each shard holds
    datasets at the name without the scope and lists them, sorted, in its root ``layer_names``."""
    h5py = pytest.importorskip("h5py")
    cls = "BertForMaskedLM"
    state = weights(cls)
    files = formats.write_weights(str(tmp_path), config_for(cls), state, "tf-h5", shard_size="20KB")
    raw = (tmp_path / "tf_model.h5.index.json").read_text()
    index = json.loads(raw)
    assert raw == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert set(index) == {"metadata", "weight_map"}
    # the tied decoder is stored once: total is the class's tensors without the alias
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in state.values())
    wm = index["weight_map"]
    assert all(k.startswith("tf_bert_for_masked_lm/") and k.endswith(":0") for k in wm)
    assert wm["tf_bert_for_masked_lm/bert/embeddings/word_embeddings/weight:0"] in files
    assert "tf_bert_for_masked_lm/mlm___cls/predictions/bias:0" in wm
    assert "tf_bert_for_masked_lm/bert/encoder/layer_._1/attention/self/query/kernel:0" in wm
    seen = set()
    for f in files[:-1]:
        with h5py.File(tmp_path / f, "r") as h:
            names = [x.decode() for x in h.attrs["layer_names"]]
            assert names == sorted(names)
            assert {f"tf_bert_for_masked_lm/{n}" for n in names} == {k for k, v in wm.items() if v == f}
            for n in names:
                assert isinstance(h[n], h5py.Dataset)
            seen.update(names)
    kernel = "bert/encoder/layer_._0/intermediate/dense/kernel:0"
    with h5py.File(tmp_path / wm["tf_bert_for_masked_lm/" + kernel], "r") as h:
        np.testing.assert_array_equal(h[kernel][()], state["bert.encoder.layer.0.intermediate.dense.weight"].T)
    assert len(seen) == len(wm)


def test_sharded_msgpack_reads_with_flax(tmp_path):
    """Each shard is flax.serialization bytes of its own subtree; the index keys are "/" paths."""
    serialization = pytest.importorskip("flax.serialization")
    from flax.traverse_util import flatten_dict
    cls = "BertForPreTraining"
    state = weights(cls)
    files = formats.write_weights(str(tmp_path), config_for(cls), state, "flax-msgpack", shard_size="15KB")
    wm = json.loads((tmp_path / "flax_model.msgpack.index.json").read_text())["weight_map"]
    from bert_common.weights import to_scheme
    ref = to_scheme(state, "flax")
    got = {}
    for f in files[:-1]:
        tree = serialization.msgpack_restore((tmp_path / f).read_bytes())
        flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(tree).items()}
        assert all(wm[k] == f for k in flat)
        got.update(flat)
    assert set(got) == set(ref) == set(wm)
    for k in ref:
        assert got[k].tobytes() == ref[k].tobytes(), k


def test_shard_planner_follows_hf_rule():
    from bert_common.formats import shards
    sizes = [("a", 6), ("b", 6), ("c", 2), ("d", 6), ("e", 2), ("f", 2), ("g", 30)]
    assert shards.plan(sizes, 10) == [["a"], ["b", "c"], ["d", "e", "f"], ["g"]]  # HF's documented example
    assert shards.plan(sizes, None) == [[k for k, _ in sizes]]
    assert shards.shard_file("tf_model.h5", 2, 5) == "tf_model-00002-of-00005.h5"
    assert shards.shard_file("flax_model.msgpack", 1, 3) == "flax_model-00001-of-00003.msgpack"
