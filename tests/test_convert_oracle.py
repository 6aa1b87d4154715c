"""Interop with the Hugging Face oracle (transformers 4.57.1, test-only):

- files HF writes (``save_pretrained(safe_serialization=False)`` -> pytorch_model.bin, Flax msgpack, TF h5
  where tf-keras is installed, and HF's own reader of Google checkpoints) load through bert_common with
  HF's tensors bitwise and HF's outputs (<= 1e-5);
- files we write load in HF with the outputs of the HF torch model built from the same weights;
- one test per backend (skipped until that backend exports BertModel) loads every format.
"""
from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from bert_common import formats, testing
from bert_common.convert import convert_checkpoint
from bert_common.weights import HEADS

TOL = 1e-5
# HF's Flax class for our causal LM is FlaxBertForCausalLM; everything else is the prefixed name.
FLAX_NAMES = {**{c: "Flax" + c for c in HEADS}, "BertLMHeadModel": "FlaxBertForCausalLM"}


def config_for(cls: str):
    return testing.tiny_config(num_labels=2 if cls == "BertForQuestionAnswering" else 3,
                               is_decoder=cls == "BertLMHeadModel")


def hf_config(cfg):
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(**cfg.to_dict())


def inputs(cfg, cls):
    return testing.random_inputs(cfg, cls, labels=False)


def torch_outputs(model, batch) -> list[np.ndarray]:
    import torch
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    return [v.numpy() for v in out.values() if isinstance(v, torch.Tensor)]


def hf_torch_from_canonical(cfg, cls, state):
    """HF torch model holding canonical ``state`` (the reference for outputs)."""
    import torch
    transformers = pytest.importorskip("transformers")
    model = getattr(transformers, cls)(hf_config(cfg)).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                                strict=False)
    assert not unexpected and all("position_ids" in m or "decoder" in m for m in missing), (missing, unexpected)
    model.tie_weights()
    return model


def to_numpy(v) -> np.ndarray:
    """Any framework's tensor as NumPy (torch tensors may require grad)."""
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def assert_outputs_close(got: list, want: list[np.ndarray]):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(to_numpy(g), w, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------- HF -> us
def test_hf_pytorch_bin_reads_bitwise_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for cls in HEADS:
        cfg = config_for(cls)
        torch.manual_seed(0)
        model = getattr(transformers, cls)(hf_config(cfg)).eval()
        d = tmp_path / cls
        model.save_pretrained(d, safe_serialization=False)
        assert (d / "pytorch_model.bin").is_file()
        state, fmt = formats.read_weights(str(d))
        assert fmt == "pytorch"
        ref = model.state_dict()
        for name, arr in state.items():
            assert arr.tobytes() == ref[name].numpy().tobytes(), name
        # through our safetensors and back into HF: same outputs
        convert_checkpoint(d, tmp_path / f"{cls}-st")
        again = getattr(transformers, cls).from_pretrained(tmp_path / f"{cls}-st").eval()
        batch = inputs(cfg, cls)
        assert_outputs_close(torch_outputs(again, batch), torch_outputs(model, batch))


def test_hf_flax_msgpack_reads_bitwise(tmp_path):
    pytest.importorskip("flax")
    transformers = pytest.importorskip("transformers")
    from flax.traverse_util import flatten_dict
    for cls in ("BertModel", "BertForPreTraining"):  # no prefix / "bert/" prefix + both cls heads
        cfg = config_for(cls)
        model = getattr(transformers, FLAX_NAMES[cls])(hf_config(cfg), seed=0)
        d = tmp_path / cls
        model.save_pretrained(d)
        assert (d / "flax_model.msgpack").is_file()
        state, fmt = formats.read_weights(str(d))
        assert fmt == "flax-msgpack"
        flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(model.params).items()}
        from bert_common.weights import to_scheme
        ours = to_scheme(state, "flax")
        assert set(ours) == set(flat)
        for k in flat:
            assert ours[k].tobytes() == flat[k].tobytes(), k
        # The mapping itself (not only this round trip) is checked against HF Flax's outputs in
        # test_hf_loads_what_we_write[flax-msgpack]; a forward here would only add a jax compile.


def test_hf_reads_our_google_checkpoint(tmp_path):
    """HF's own Google-checkpoint loader (load_tf_weights_in_bert) accepts what we write."""
    pytest.importorskip("tensorflow")
    transformers = pytest.importorskip("transformers")
    cls = "BertForPreTraining"
    cfg = config_for(cls)
    state = testing.random_weights(cfg, cls)
    d = tmp_path / "google"
    d.mkdir()
    formats.write_weights(str(d), cfg, state, "google-ckpt")
    model = transformers.BertForPreTraining(hf_config(cfg)).eval()
    transformers.load_tf_weights_in_bert(model, hf_config(cfg), str(d / "bert_model.ckpt"))
    batch = inputs(cfg, cls)
    assert_outputs_close(torch_outputs(model, batch), torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch))


# ---------------------------------------------------------------------------------------------- us -> HF
@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "flax-msgpack"])
def test_hf_loads_what_we_write(tmp_path, fmt):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    heads = list(HEADS)
    if fmt == "flax-msgpack":
        pytest.importorskip("flax")
        # Flax models compile per class (~3 s each on 2 cores): the classes whose tree layouts differ.
        heads = ["BertModel", "BertForPreTraining", "BertForQuestionAnswering"]
    for cls in heads:
        cfg = config_for(cls)
        state = testing.random_weights(cfg, cls, seed=1)
        src = tmp_path / f"{cls}-src"
        from bert_common.checkpoint import save_checkpoint
        save_checkpoint(src, cfg, state, architectures=[cls])
        dst = tmp_path / f"{cls}-{fmt}"
        convert_checkpoint(src, dst, to=fmt)
        batch = inputs(cfg, cls)
        want = torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch)
        if fmt == "flax-msgpack":
            model = getattr(transformers, FLAX_NAMES[cls]).from_pretrained(dst)
            out = model(**batch)
            got = [np.asarray(v) for v in out.values() if hasattr(v, "shape")]
        else:
            model = getattr(transformers, cls).from_pretrained(dst, use_safetensors=fmt == "safetensors").eval()
            got = torch_outputs(model, batch)
        assert_outputs_close(got, want)


def test_sharded_flax_msgpack_both_ways(tmp_path):
    """HF Flax writes shards (max_shard_size) -> we read bitwise; we write shards -> HF Flax loads them
    with the outputs of HF torch on the same weights."""
    pytest.importorskip("flax")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from flax.traverse_util import flatten_dict

    from bert_common.weights import to_scheme
    cls = "BertForPreTraining"
    cfg = config_for(cls)
    model = getattr(transformers, FLAX_NAMES[cls])(hf_config(cfg), seed=0)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "flax_model.msgpack.index.json").is_file()
    state, fmt = formats.read_weights(str(tmp_path / "hf"))
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(model.params).items()}
    ours = to_scheme(state, "flax")
    assert fmt == "flax-msgpack" and set(ours) == set(flat)
    assert all(ours[k].tobytes() == flat[k].tobytes() for k in flat)

    state = testing.random_weights(cfg, cls, seed=4)
    from bert_common.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "src", cfg, state, architectures=[cls])
    convert_checkpoint(tmp_path / "src", tmp_path / "ours", to="flax-msgpack", shard_size="20KB")
    assert (tmp_path / "ours" / "flax_model.msgpack.index.json").is_file()
    again = getattr(transformers, FLAX_NAMES[cls]).from_pretrained(tmp_path / "ours")
    batch = inputs(cfg, cls)
    got = [np.asarray(v) for v in again(**batch).values() if hasattr(v, "shape")]
    assert_outputs_close(got, torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch))


# ---------------------------------------------------------------------------------------------- TF h5
def _tf_keras_transformers():
    """HF's TF classes need tf-keras (transformers imports it itself when installed; we do not set
    TF_USE_LEGACY_KERAS, which would switch tf.keras for every other test in the process)."""
    pytest.importorskip("tf_keras")
    return pytest.importorskip("transformers")


def test_hf_tf_h5_both_ways(tmp_path):
    transformers = _tf_keras_transformers()
    pytest.importorskip("torch")
    for cls in HEADS:
        cfg = config_for(cls)
        tf_cls = getattr(transformers, "TF" + cls)
        # HF writes -> we read bitwise (HF TF init) -> HF torch on our weights gives HF TF's outputs
        model = tf_cls(hf_config(cfg))
        batch = inputs(cfg, cls)
        out_tf = model(**batch)
        d = tmp_path / f"{cls}-hf"
        model.save_pretrained(d)
        state, fmt = formats.read_weights(str(d))
        assert fmt == "tf-h5"
        want = torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch)
        assert_outputs_close([np.asarray(v) for v in out_tf.values() if hasattr(v, "shape")], want)
        # we write -> HF TF reads, same outputs
        state = testing.random_weights(cfg, cls, seed=2)
        src = tmp_path / f"{cls}-src"
        from bert_common.checkpoint import save_checkpoint
        save_checkpoint(src, cfg, state, architectures=[cls])
        want = torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch)
        for shard in (None, "20KB"):  # single tf_model.h5, then HF's sharded layout + index
            dst = tmp_path / f"{cls}-h5-{shard}"
            convert_checkpoint(src, dst, to="tf-h5", shard_size=shard)
            again = tf_cls.from_pretrained(dst)
            got = again(**batch)
            assert_outputs_close([np.asarray(v) for v in got.values() if hasattr(v, "shape")], want)
        # HF writes shards -> we read the same tensors as from its single file
        model.save_pretrained(tmp_path / f"{cls}-hf-sharded", max_shard_size="20KB")
        sharded, _ = formats.read_weights(str(tmp_path / f"{cls}-hf-sharded"))
        single, _ = formats.read_weights(str(d))
        assert list(sharded) == list(single) and all(sharded[k].tobytes() == single[k].tobytes() for k in single)


# ---------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("backend", ["bert_torch", "bert_tf", "bert_flax"])
def test_backend_loads_every_format(tmp_path, backend):
    """Each backend's from_pretrained reads every format (through bert_common.checkpoint) bitwise; HF's outputs."""
    mod = importlib.import_module(backend)
    if not hasattr(mod, "BertForPreTraining"):
        pytest.skip(f"{backend} does not export BertForPreTraining yet")
    pytest.importorskip("torch")
    cls = "BertForPreTraining"
    cfg = config_for(cls)
    state = testing.random_weights(cfg, cls, seed=3)
    from bert_common.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "src", cfg, state, architectures=[cls])
    batch = inputs(cfg, cls)
    want = torch_outputs(hf_torch_from_canonical(cfg, cls, state), batch)
    for i, fmt in enumerate(formats.FORMATS):
        try:
            convert_checkpoint(tmp_path / "src", tmp_path / fmt, to=fmt)
        except ImportError as e:
            pytest.skip(str(e))
        if fmt == "google-ckpt":  # as Google released them: bert_config.json, no config.json
            os.remove(tmp_path / fmt / "config.json")
        model = getattr(mod, cls).from_pretrained(str(tmp_path / fmt))
        loaded = model.canonical_state_dict()
        for name, arr in state.items():  # the weights arrive bitwise, whatever the file format
            assert to_numpy(loaded[name]).tobytes() == arr.tobytes(), (fmt, name)
        if i == 0:  # and compute HF's numbers (one forward: each compiles a graph in TF / Flax)
            out = model(**batch)
            assert_outputs_close([out[k] for k in ("prediction_logits", "seq_relationship_logits")], want)
