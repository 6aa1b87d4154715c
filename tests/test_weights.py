"""Canonical names, the naming schemes, and state-dict matching."""
import numpy as np
import pytest

from bert_common import weights as W
from bert_common.testing import VARIANTS, random_weights, tiny_config

ALL_SCHEMES = ("torch", "flax", "tf")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model_class", W.MODEL_CLASSES)
@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_scheme_round_trip_is_bitwise_identity(variant, model_class, scheme):
    cfg = tiny_config(variant)
    state = random_weights(cfg, model_class, seed=3)
    mapped = W.to_scheme(state, scheme)
    assert len(mapped) == len(state)  # injective: no two tensors share a path
    back = W.from_scheme(mapped, scheme, W.canonical_shapes(cfg, model_class))
    assert list(back) == list(state)
    for name in state:
        assert back[name].dtype == state[name].dtype
        assert back[name].tobytes() == state[name].tobytes(), name


def test_flax_and_tf_leaves_and_transposes():
    cfg = tiny_config("relative_key")
    cases = {
        "encoder.layer.1.attention.self.query.weight": ("flax", "encoder/layer/1/attention/self/query/kernel", True),
        "embeddings.word_embeddings.weight": ("flax", "embeddings/word_embeddings/embedding", False),
        "encoder.layer.0.output.LayerNorm.weight": ("flax", "encoder/layer/0/output/LayerNorm/scale", False),
        "encoder.layer.0.attention.self.distance_embedding.weight":
            ("tf", "encoder/layer/0/attention/self/distance_embedding/embeddings", False),
        "encoder.layer.0.output.LayerNorm.bias": ("tf", "encoder/layer/0/output/LayerNorm/beta", False),
        "cls.predictions.bias": ("tf", "cls/predictions/bias", False),
        "pooler.dense.weight": ("tf", "pooler/dense/kernel", True),
    }
    for name, (scheme, path, transpose) in cases.items():
        assert W.scheme_path(name, scheme) == (path, transpose)
    state = random_weights(cfg, "BertModel")
    q = "encoder.layer.0.intermediate.dense.weight"
    assert W.to_scheme(state, "flax")["encoder/layer/0/intermediate/dense/kernel"].shape == state[q].T.shape


def test_from_scheme_reports_every_problem_by_name():
    cfg = tiny_config()
    mapped = W.to_scheme(random_weights(cfg, "BertModel"), "flax")
    mapped.pop("pooler/dense/bias")
    mapped["encoder/layer/9/output/dense/bias"] = np.zeros(3, np.float32)
    mapped["embeddings/LayerNorm/scale"] = np.zeros(5, np.float32)
    with pytest.raises(W.WeightMappingError) as e:
        W.from_scheme(mapped, "flax", W.canonical_shapes(cfg, "BertModel"))
    msg = str(e.value)
    assert "missing (1): pooler.dense.bias" in msg
    assert "unexpected (1): encoder/layer/9/output/dense/bias" in msg
    assert "embeddings.LayerNorm.weight (5,) (expected (32,))" in msg


def test_canonical_names_match_hf_state_dicts():
    transformers = pytest.importorskip("transformers")
    for variant in VARIANTS:
        cfg = tiny_config(variant)
        hf_cfg = transformers.BertConfig.from_dict(cfg.to_dict())
        for model_class in W.MODEL_CLASSES:
            model = getattr(transformers, model_class)(hf_cfg)
            sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            ours = W.canonical_shapes(cfg, model_class)
            aliases = W.tied_aliases(cfg, model_class)
            theirs = {k: v for k, v in sd.items() if not k.endswith(W.IGNORED_BUFFERS) and k not in aliases}
            assert ours == theirs, (variant, model_class, set(ours) ^ set(theirs))


def test_base_checkpoint_into_head_and_back():
    cfg = tiny_config()
    base = random_weights(cfg, "BertModel", seed=1)
    base["embeddings.position_ids"] = np.arange(cfg.max_position_embeddings)[None]
    params, report = W.match_state_dict(base, cfg, "BertForSequenceClassification", allow_new_head=True)
    assert report.initialized == ["classifier.weight", "classifier.bias"]
    assert report.ignored == ["embeddings.position_ids"]
    np.testing.assert_array_equal(params["bert.encoder.layer.1.output.dense.weight"],
                                  base["encoder.layer.1.output.dense.weight"])
    assert params["classifier.bias"].tolist() == [0.0] * cfg.num_labels
    # Without allow_new_head the missing head is an error that names the tensors and the fix.
    with pytest.raises(W.WeightMappingError, match="allow_new_head=True") as e:
        W.match_state_dict(base, cfg, "BertForSequenceClassification")
    assert "classifier.weight" in str(e.value)
    # A head checkpoint loads into the base model; head tensors are reported, not fatal.
    head = random_weights(cfg, "BertForPreTraining", seed=2)
    params, report = W.match_state_dict(head, cfg, "BertModel")
    assert set(report.unexpected) == set(W.head_names(cfg, "BertForPreTraining"))
    np.testing.assert_array_equal(params["pooler.dense.weight"], head["bert.pooler.dense.weight"])


def test_tied_decoder_restored_and_checked():
    cfg = tiny_config()
    state = random_weights(cfg, "BertForMaskedLM")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].copy()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].copy()
    params, report = W.match_state_dict(state, cfg, "BertForMaskedLM")
    assert "cls.predictions.decoder.weight" not in params and set(report.ignored) >= {
        "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    with pytest.raises(W.WeightMappingError, match="tied to bert.embeddings.word_embeddings.weight"):
        W.match_state_dict(state, cfg, "BertForMaskedLM")
    untied = tiny_config(tie_word_embeddings=False)
    assert W.canonical_shapes(untied, "BertForMaskedLM")["cls.predictions.decoder.weight"] == (99, 32)


def test_mismatch_and_extra_layer_are_fatal():
    cfg = tiny_config()
    state = random_weights(cfg, "BertModel")
    state["encoder.layer.5.output.dense.bias"] = np.zeros(32, np.float32)
    with pytest.raises(W.WeightMappingError, match="unexpected .*encoder.layer.5.output.dense.bias"):
        W.match_state_dict(state, cfg, "BertModel")
    bad = random_weights(cfg, "BertModel")
    bad["pooler.dense.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(W.WeightMappingError, match=r"pooler.dense.weight \(32, 31\) \(expected \(32, 32\)\)"):
        W.match_state_dict(bad, cfg, "BertModel")


def test_init_weights_follow_hf_convention():
    cfg = tiny_config(initializer_range=0.5)
    w = W.init_weights(cfg, "BertForMaskedLM", seed=0)
    assert np.all(w["bert.embeddings.LayerNorm.weight"] == 1) and np.all(w["cls.predictions.bias"] == 0)
    assert np.all(w["bert.embeddings.word_embeddings.weight"][cfg.pad_token_id] == 0)
    q = w["bert.encoder.layer.0.attention.self.query.weight"]
    assert 0.4 < q.std() < 0.6 and abs(q.mean()) < 0.1
    assert all(np.array_equal(w[k], W.init_weights(cfg, "BertForMaskedLM", seed=0)[k]) for k in w)


def test_fillable_classes_and_parameter_count(minilm_dir):
    from bert_common.checkpoint import load_checkpoint
    cfg, state, fmt = load_checkpoint(minilm_dir)
    assert fmt == "safetensors"
    assert W.fillable_classes(state, cfg) == ["BertModel"]
    assert W.parameter_count(cfg) == 22_713_216
    assert sum(v.size for k, v in state.items() if "position_ids" not in k) == W.parameter_count(cfg)


def test_no_weight_decay_rule():
    assert W.no_weight_decay("bert.encoder.layer.0.output.dense.bias")
    assert W.no_weight_decay("bert.embeddings.LayerNorm.weight")
    assert not W.no_weight_decay("bert.encoder.layer.0.output.dense.weight")
