"""Hostile checkpoint files, generated here at test time (no binary fixtures): every reader refuses them
with ``CheckpointError`` naming the file and the tensor (or the cap), before trusting them, and the CLI
exits 2. Plus a bounded fuzz: mutated valid files give a clear error or the exact weights, never
anything else."""
from __future__ import annotations

import json
import os
import random
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from bert_common import formats, testing
from bert_common.cli import main
from bert_common.formats import CheckpointError
from bert_common.formats.base import MAX_TENSORS
from bert_common.weights import WeightMappingError, match_state_dict

CLS = "BertModel"
WORD = "embeddings.word_embeddings.weight"


def cfg():
    return testing.tiny_config(num_hidden_layers=1)


def state():
    return testing.random_weights(cfg(), CLS)


def checkpoint(tmp_path, fmt: str, name: str = "ck", **opts):
    d = tmp_path / name
    d.mkdir()
    formats.write_weights(str(d), cfg(), state(), fmt, **opts)
    cfg().save_pretrained(str(d))
    return d


def refused(path, *needles, config=None):
    """Reading ``path`` raises CheckpointError whose message holds every needle; returns the message."""
    with pytest.raises(CheckpointError) as e:
        formats.read_weights(str(path), config)
    msg = str(e.value)
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ---------------------------------------------------------------------------------------------- safetensors
def st_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def st_write(d, header: dict, data: bytes):
    d.mkdir(exist_ok=True)
    (d / "model.safetensors").write_bytes(st_bytes(header, data))
    cfg().save_pretrained(str(d))
    return d


@pytest.mark.parametrize("dtype", ["I32", "I64", "BOOL", "U8", "C64"])
def test_safetensors_non_float_weight_is_refused(tmp_path, dtype):
    d = st_write(tmp_path / "d", {WORD: {"dtype": dtype, "shape": [2], "data_offsets": [0, 8 if dtype != "BOOL"
                                                                                        and dtype != "U8" else 2]}},
                 b"\0" * (8 if dtype not in ("BOOL", "U8") else 2))
    refused(d / "model.safetensors", "model.safetensors", WORD, repr(dtype))


def test_safetensors_integer_buffer_is_allowed(tmp_path):
    ids = np.arange(64, dtype=np.int64)[None]
    d = st_write(tmp_path / "d", {"embeddings.position_ids": {"dtype": "I64", "shape": [1, 64],
                                                              "data_offsets": [0, 512]}}, ids.tobytes())
    got, _ = formats.read_weights(str(d), cfg())
    assert got["embeddings.position_ids"].tolist() == ids.tolist()


@pytest.mark.parametrize("offsets", [[0.0, 16.0], ["0", "16"], [0], [True, 16], None])
def test_safetensors_bad_offsets_are_refused(tmp_path, offsets):
    d = st_write(tmp_path / "d", {"x": {"dtype": "F32", "shape": [4], "data_offsets": offsets}}, b"\0" * 16)
    refused(d, "'x'")


def test_safetensors_shape_against_config_before_data(tmp_path):
    # (4, 4) is not the (99, 32) embedding table of the config: refused from the header alone
    d = st_write(tmp_path / "d", {WORD: {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 64)
    refused(d, WORD, "(4, 4)", "(99, 32)", config=cfg())


def test_safetensors_overflowing_shape_is_refused(tmp_path):
    d = st_write(tmp_path / "d", {"x": {"dtype": "F32", "shape": [2**40, 2**40, 2**40], "data_offsets": [0, 0]}},
                 b"")
    refused(d, "'x'")


def test_safetensors_tensor_count_cap(tmp_path):
    """The pathological header of many zero-size entries is refused at once, saying the cap."""
    n = MAX_TENSORS + 1
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    d = st_write(tmp_path / "d", header, b"")
    refused(d, f"{n} tensors", str(MAX_TENSORS))


def test_safetensors_header_size_cap(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    refused(d, "cap")


# ---------------------------------------------------------------------------------------------- pytorch
def test_pytorch_deflated_zip_is_inflated_not_mapped(tmp_path):
    """A legal zip whose entries are DEFLATE-compressed loads bitwise (torch inflates it), never mapped."""
    pytest.importorskip("torch")
    d = checkpoint(tmp_path, "pytorch")
    src = d / "pytorch_model.bin"
    packed = tmp_path / "deflated.bin"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    os.replace(packed, src)
    assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(src).infolist())
    got, _ = formats.read_weights(str(d), cfg())
    ref = state()
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].tobytes() == ref[k].tobytes(), k


@pytest.mark.parametrize("dtype", ["int32", "bool", "complex64", "int8"])
def test_pytorch_non_float_weight_is_refused(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    d = tmp_path / "d"
    d.mkdir()
    torch.save({WORD: torch.zeros(3, dtype=getattr(torch, dtype))}, d / "pytorch_model.bin")
    refused(d, "pytorch_model.bin", WORD, dtype)


def test_pytorch_compression_bomb_is_refused(tmp_path):
    pytest.importorskip("torch")
    d = checkpoint(tmp_path, "pytorch")
    src = d / "pytorch_model.bin"
    packed = tmp_path / "bomb.bin"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr(info.filename.split("/")[0] + "/data/999", b"\0" * 50_000_000)  # inflates to 50 MB
    os.replace(packed, src)
    assert os.path.getsize(src) < 1_000_000
    refused(d, "inflate", "cap", config=cfg())


def test_pytorch_shape_against_config(tmp_path):
    torch = pytest.importorskip("torch")
    d = tmp_path / "d"
    d.mkdir()
    torch.save({WORD: torch.zeros(5, 5)}, d / "pytorch_model.bin")
    refused(d, WORD, "(5, 5)", config=cfg())


# ---------------------------------------------------------------------------------------------- h5
H5_WORD = "bert/embeddings/word_embeddings/weight:0"


def h5_file(d, build):
    h5py = pytest.importorskip("h5py")
    d.mkdir()
    with h5py.File(d / "tf_model.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"bert"])
        g = f.create_group("bert")
        g.attrs["weight_names"] = np.array([f"tf_bert_model/{H5_WORD}".encode()])
        build(g, f"tf_bert_model/{H5_WORD}")
    cfg().save_pretrained(str(d))
    return d


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex64", "S2"])
def test_h5_non_float_dataset_is_refused(tmp_path, dtype):
    d = h5_file(tmp_path / "d", lambda g, k: g.create_dataset(k, data=np.zeros((99, 32), dtype=dtype)))
    refused(d, "tf_model.h5", H5_WORD, "dtype")


def test_h5_group_instead_of_dataset(tmp_path):
    d = h5_file(tmp_path / "d", lambda g, k: g.create_group(k))
    refused(d, "tf_model.h5", "not a dataset")


def test_h5_huge_declared_shape_is_refused_before_reading(tmp_path):
    """A small chunked file declaring a (2**29,) / (2**38,) dataset: refused from its shape, no read."""
    def build(g, k):
        g.create_dataset(k, shape=(2**38,), dtype="f4", chunks=(1024,))
    d = h5_file(tmp_path / "d", build)
    assert os.path.getsize(d / "tf_model.h5") < 100_000
    refused(d, H5_WORD, "(274877906944,)")


def test_h5_unallocated_dataset_is_refused(tmp_path):
    """A dataset of the right shape whose bytes were never written would read as fill values (zeros)."""
    d = h5_file(tmp_path / "d", lambda g, k: g.create_dataset(k, shape=(99, 32), dtype="f4"))
    refused(d, H5_WORD, "stores 0")


# ---------------------------------------------------------------------------------------------- msgpack
def msgpack_file(d, tree):
    msgpack = pytest.importorskip("msgpack")
    d.mkdir()
    (d / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    cfg().save_pretrained(str(d))
    return d


def record(arr: np.ndarray, code: int = 1):
    msgpack = pytest.importorskip("msgpack")
    return msgpack.ExtType(code, msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes()),
                                               use_bin_type=True))


@pytest.mark.parametrize("dtype", ["int32", "bool", "int64"])
def test_msgpack_non_float_leaf_is_refused(tmp_path, dtype):
    d = msgpack_file(tmp_path / "d", {"embeddings": {"word_embeddings": {
        "embedding": record(np.zeros((99, 32), dtype))}}})
    refused(d, "flax_model.msgpack", "embeddings/word_embeddings/embedding", dtype)


def test_msgpack_complex_ext_is_refused(tmp_path):
    d = msgpack_file(tmp_path / "d", {"a": record(np.zeros(2, np.float32), code=2)})
    refused(d, "flax_model.msgpack", "ext type 2")


def test_msgpack_deep_nesting_is_a_clear_error(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    msgpack = pytest.importorskip("msgpack")
    # msgpack.packb refuses to nest 1000 levels; write the bytes by hand: fixmap(1) {"a": ...} repeated
    (d / "flax_model.msgpack").write_bytes(b"\x81\xa1a" * 1000 + msgpack.packb({"x": record(np.zeros(2, np.float32))}))
    cfg().save_pretrained(str(d))
    refused(d, "flax_model.msgpack")


def test_msgpack_shape_against_config(tmp_path):
    d = msgpack_file(tmp_path / "d", {"embeddings": {"word_embeddings": {
        "embedding": record(np.zeros((2**20,), np.float16))}}})
    refused(d, "embeddings/word_embeddings/embedding", "(1048576,)")


# ---------------------------------------------------------------------------------------------- google
def test_google_non_float_and_misshaped_variables_are_refused(tmp_path):
    tf = pytest.importorskip("tensorflow")
    for name, value, needle in (("bert/embeddings/word_embeddings", np.zeros((99, 32), np.int32), "int32"),
                                ("bert/embeddings/word_embeddings", np.zeros((3, 3), np.float32), "(3, 3)")):
        d = tmp_path / needle.strip("()").replace(", ", "x")
        d.mkdir()
        tf.raw_ops.SaveV2(prefix=str(d / "bert_model.ckpt"), tensor_names=[name], shape_and_slices=[""],
                          tensors=[tf.constant(value)])
        cfg().save_pretrained(str(d))
        refused(d, "bert_model.ckpt", name, needle)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_exits_2_naming_file_and_tensor(tmp_path, capsys):
    d = st_write(tmp_path / "d", {WORD: {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    assert main(["convert", str(d), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bertrio convert: error:" in err and "model.safetensors" in err and WORD in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- fuzz
FUZZ_FORMATS = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin", "tf-h5": "tf_model.h5",
                "flax-msgpack": "flax_model.msgpack"}
NEEDS = {"pytorch": "torch", "tf-h5": "h5py", "flax-msgpack": "msgpack"}
ROUNDS = {"safetensors": 300, "pytorch": 80, "tf-h5": 120, "flax-msgpack": 200}  # bounded: seconds each


def _mutate(rng: random.Random, data: bytes, fmt: str) -> tuple[bytes, int]:
    """(mutated bytes, how many bytes changed in place; -1 = structure rewritten or truncated)."""
    kind = rng.choice(["truncate", "flip", "flip", "header"] if fmt == "safetensors" else
                      ["truncate", "flip", "flip"])
    if kind == "truncate":
        return data[:rng.randrange(len(data))], -1
    if kind == "flip":
        out = bytearray(data)
        spots = {rng.randrange(len(data)) for _ in range(rng.randint(1, 4))}
        for i in spots:
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), len(spots)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    header[name][field] = rng.choice({
        "dtype": ["I32", "F16", "F64", "BF16", "BOOL", 7, None],
        "shape": [[], [1], [2**31, 2**31], [-1], [3.5], "x", header[name]["shape"][::-1]],
        "data_offsets": [[0, 0], [1.0, 2.0], [-8, 0], [0, 2**62], header[name]["data_offsets"][::-1]],
    }[field])
    return st_bytes(header, data[8 + n:]), -1


@pytest.mark.parametrize("fmt", list(FUZZ_FORMATS))
def test_fuzz_clear_error_or_exact_weights(tmp_path, fmt):
    """Truncate, flip bytes, rewrite header fields: a clear error, or the exact weights with at most the
    flipped bytes changed (formats without checksums cannot notice a flipped data byte, but the change
    must be exactly that byte, never a shifted or reinterpreted tensor)."""
    if fmt in NEEDS:
        pytest.importorskip(NEEDS[fmt])
    d = checkpoint(tmp_path, fmt)
    ref, _ = match_state_dict(formats.read_weights(str(d), cfg())[0], cfg(), CLS)
    ref = {k: np.array(v) for k, v in ref.items()}
    file = d / FUZZ_FORMATS[fmt]
    original = file.read_bytes()
    rng = random.Random(f"fuzz-{fmt}")
    outcomes = {"error": 0, "exact": 0, "flipped data": 0}
    for _ in range(ROUNDS[fmt]):
        data, changed = _mutate(rng, original, fmt)
        file.write_bytes(data)
        try:
            got, _ = formats.read_weights(str(d), cfg())
            # what from_pretrained does next: a renamed tensor (a flipped name byte) fails here
            got, _ = match_state_dict(got, cfg(), CLS)
        except (CheckpointError, WeightMappingError) as e:
            assert str(e), "an error must say something"
            outcomes["error"] += 1
            continue
        assert list(got) == list(ref)
        diff = 0
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            diff += int(np.count_nonzero(got[k].view(np.uint8) != ref[k].view(np.uint8)))
        assert diff == 0 or 0 <= diff <= changed, (changed, diff)
        outcomes["exact" if diff == 0 else "flipped data"] += 1
    assert outcomes["error"] > ROUNDS[fmt] // 4, outcomes  # the mutations do reach the validation


def test_bf16_and_fp16_pass_every_allow_list(tmp_path):
    """The allow-lists keep every floating dtype HF writes."""
    for fmt in ("safetensors", "pytorch", "tf-h5", "flax-msgpack"):
        if fmt in NEEDS:
            pytest.importorskip(NEEDS[fmt])
        for dt in (np.float16, ml_dtypes.bfloat16, np.float64):
            s = {k: v.astype(dt) for k, v in state().items()}
            d = tmp_path / f"{fmt}-{np.dtype(dt).name}"
            d.mkdir()
            formats.write_weights(str(d), cfg(), s, fmt)
            got, _ = formats.read_weights(str(d), cfg())
            assert all(got[k].tobytes() == s[k].tobytes() for k in s)
