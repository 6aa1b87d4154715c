"""safetensors I/O, sharding, atomic writes — no framework involved."""
import json
import os

import numpy as np
import pytest

from bert_common import checkpoint
from bert_common.formats import safetensors as st
from bert_common.config import BertConfig
from bert_common.formats import CheckpointError
from bert_common.testing import random_weights, tiny_config


def _state():
    import ml_dtypes
    return {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "embeddings.position_ids": np.array([1, -2], np.int64),
            "c": np.linspace(-3, 3, 7).astype(ml_dtypes.bfloat16), "d": np.zeros((0, 5), np.float16),
            "e": np.array(2.5, np.float64)}


def test_round_trip_all_dtypes(tmp_path):
    state = _state()
    st.save_file(state, tmp_path / "x.safetensors", {"format": "pt"})
    back = st.load_file(tmp_path / "x.safetensors")
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and back[k].shape == state[k].shape
        assert back[k].tobytes() == state[k].tobytes()
    assert st.metadata(tmp_path / "x.safetensors") == {"format": "pt"}


def test_interoperates_with_the_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = {k: v for k, v in _state().items() if k != "c"}
    st.save_file(state, tmp_path / "ours.safetensors")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert all(np.array_equal(theirs[k], state[k]) for k in state)
    st.save_file(state, str(tmp_path / "theirs.safetensors"))
    ours = st.load_file(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(ours[k], state[k]) for k in state)


def test_truncated_and_inconsistent_files_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    st.save_file(_state(), path)
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-3])
    with pytest.raises(CheckpointError, match="trunc.safetensors: .*(data section|truncated)"):
        st.load_file(tmp_path / "trunc.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(raw[:5])
    with pytest.raises(CheckpointError, match="no header"):
        st.load_file(tmp_path / "tiny.safetensors")
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["a"]["shape"] = [4, 4]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    (tmp_path / "bad.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    with pytest.raises(CheckpointError, match="tensor 'a' spans 48 bytes but \\(4, 4\\)"):
        st.load_file(tmp_path / "bad.safetensors")


def test_sharded_write_and_read(tmp_path):
    cfg = tiny_config()
    state = random_weights(cfg, "BertForMaskedLM")
    checkpoint.save_checkpoint(tmp_path / "ck", cfg, state, shard_size="20KB")
    files = sorted(os.listdir(tmp_path / "ck"))
    shards = [f for f in files if f.startswith("model-0")]
    assert len(shards) > 2 and "model.safetensors.index.json" in files and "model.safetensors" not in files
    for f in shards:  # each shard respects the limit unless a single tensor is larger
        sizes = [v.nbytes for v in st.load_file(tmp_path / "ck" / f).values()]
        assert sum(sizes) <= 20_000 or len(sizes) == 1
    cfg2, back, fmt = checkpoint.load_checkpoint(tmp_path / "ck")
    assert fmt == "safetensors" and cfg2 == cfg
    assert list(back) == list(state) and all(np.array_equal(back[k], state[k]) for k in state)
    # Re-saving unsharded removes the stale index so the two layouts can never be mixed.
    checkpoint.save_checkpoint(tmp_path / "ck", cfg, state)
    assert "model.safetensors.index.json" not in os.listdir(tmp_path / "ck")


def test_inconsistent_shard_index_is_refused(tmp_path):
    cfg = tiny_config()
    checkpoint.save_checkpoint(tmp_path / "ck", cfg, random_weights(cfg), shard_size="20KB")
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "model-00002-of-00099.safetensors"
    (tmp_path / "ck" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard model-00002-of-00099.safetensors is missing"):
        checkpoint.load_checkpoint(tmp_path / "ck")


def test_no_weights_and_bad_shard_size(tmp_path):
    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights found in"):
        checkpoint.load_checkpoint(tmp_path)
    for bad in ("2XB", "-1GB", "0"):
        with pytest.raises(ValueError, match="shard size"):
            checkpoint.parse_size(bad)
    assert checkpoint.parse_size("2GB") == 2 * 10**9 and checkpoint.parse_size("1MiB") == 2**20


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.safetensors"
    st.save_file({"a": np.ones(3, np.float32)}, target)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="cannot be stored"):
        st.save_file({"a": np.ones(3, np.float32), "s": np.array(["x"])}, target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.safetensors"]


def test_atomic_directory_refuses_existing_and_keeps_old_on_failure(tmp_path):
    cfg = tiny_config()
    state = random_weights(cfg)
    checkpoint.save_checkpoint_dir(tmp_path / "d", cfg, state)
    with pytest.raises(FileExistsError, match="--overwrite"):
        checkpoint.save_checkpoint_dir(tmp_path / "d", cfg, state)
    with pytest.raises(ValueError):
        checkpoint.save_checkpoint_dir(tmp_path / "d", cfg, {"x": np.array(["s"])}, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["d"]
    _, back, _ = checkpoint.load_checkpoint(tmp_path / "d")
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_hf_loads_our_checkpoint_and_we_load_hf(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cfg = tiny_config()
    state = random_weights(cfg, "BertForMaskedLM")
    checkpoint.save_checkpoint(tmp_path / "ours", cfg, state, tokenizer_from=minilm_dir)
    assert "vocab.txt" in os.listdir(tmp_path / "ours")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours")
    sd = hf.state_dict()
    for k, v in state.items():
        assert torch.equal(sd[k], torch.from_numpy(v)), k
    hf.save_pretrained(tmp_path / "theirs")
    _, back, _ = checkpoint.load_checkpoint(tmp_path / "theirs")
    for k, v in state.items():
        assert np.array_equal(back[k], v), k


def test_errors_name_the_real_path_not_the_pinned_one(tmp_path):
    cfg = tiny_config()
    checkpoint.save_checkpoint(tmp_path / "ck", cfg, random_weights(cfg))
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck" / "model.safetensors") in str(e.value) and "/proc/self/fd" not in str(e.value)


def test_save_into_existing_directory_keeps_other_files(tmp_path):
    cfg = tiny_config()
    d = tmp_path / "ck"
    checkpoint.save_checkpoint(d, cfg, random_weights(cfg, seed=0), shard_size="20KB")
    (d / "training_args.bin").write_bytes(b"keep me")
    (d / "sub").mkdir()
    (d / "sub" / "x.txt").write_text("x")
    new = random_weights(cfg, seed=1)
    checkpoint.save_checkpoint(d, cfg, new)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "sub", "training_args.bin"]
    assert (d / "training_args.bin").read_bytes() == b"keep me" and (d / "sub" / "x.txt").read_text() == "x"
    _, back, _ = checkpoint.load_checkpoint(d)
    assert all(back[k].tobytes() == new[k].tobytes() for k in new)
    assert [n for n in os.listdir(tmp_path) if n != "ck"] == []  # no temp siblings left
