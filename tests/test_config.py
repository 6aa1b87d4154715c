import json
import os

import pytest

from bert_common import BertConfig


def test_minilm_config_round_trips_every_key(minilm_dir, tmp_path):
    with open(os.path.join(minilm_dir, "config.json")) as f:
        original = json.load(f)
    cfg = BertConfig.from_pretrained(minilm_dir)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    out = cfg.to_dict()
    for key, value in original.items():  # nothing lost, nothing changed
        assert key in out and out[key] == value, key
    cfg.save_pretrained(tmp_path)
    again = BertConfig.from_pretrained(tmp_path)
    assert again == cfg and again.to_dict() == out


def test_unknown_keys_survive_and_labels_serialise():
    cfg = BertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "my_custom_key": [1, {"a": 2}],
                                "id2label": {"0": "neg", "1": "neu", "2": "pos"}})
    d = cfg.to_dict()
    assert d["my_custom_key"] == [1, {"a": 2}]
    assert cfg.num_labels == 3 and cfg.id2label[2] == "pos" and cfg.label2id["neu"] == 1
    assert d["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}  # JSON keys are strings, as in HF
    assert BertConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_num_labels_builds_default_labels():
    cfg = BertConfig(num_labels=5)
    assert cfg.num_labels == 5 and cfg.id2label[4] == "LABEL_4"


@pytest.mark.parametrize("field,value,needle", [
    ("hidden_size", 30, "hidden_size=30 is not divisible by num_attention_heads=12"),
    ("hidden_act", "gelu_bogus", "hidden_act='gelu_bogus'"),
    ("position_embedding_type", "rotary", "position_embedding_type='rotary'"),
    ("vocab_size", 0, "vocab_size must be a positive int"),
    ("num_hidden_layers", -1, "num_hidden_layers must be a positive int"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
    ("layer_norm_eps", 0, "layer_norm_eps"),
    ("problem_type", "ranking", "problem_type='ranking'"),
    ("attn_implementation", "flash", "attn_implementation='flash'"),
    ("chunk_size_feed_forward", -4, "chunk_size_feed_forward must be an int >= 0"),
])
def test_validation_names_the_field(field, value, needle):
    with pytest.raises(ValueError) as e:
        BertConfig(**{field: value})
    assert needle in str(e.value)


def test_cross_attention_requires_decoder():
    with pytest.raises(ValueError, match="add_cross_attention=True requires is_decoder=True"):
        BertConfig(add_cross_attention=True)


def test_explicit_numerics():
    cfg = BertConfig(hidden_act="gelu_new")
    assert cfg.layer_norm_eps == 1e-12 and cfg.gelu_variant == "gelu_tanh"
    assert BertConfig().gelu_variant == "gelu_exact"
    assert BertConfig(classifier_dropout=None, hidden_dropout_prob=0.2).classifier_dropout_prob == 0.2


def test_hf_attn_key_is_read():
    assert BertConfig.from_dict({"_attn_implementation": "eager"}).attn_implementation == "eager"


def test_missing_and_malformed_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        BertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 7}))
    with pytest.raises(ValueError, match=r"config.json: BertConfig.hidden_size=7"):
        BertConfig.from_pretrained(tmp_path)


def test_agrees_with_hf_config_defaults():
    transformers = pytest.importorskip("transformers")
    ours, theirs = BertConfig().to_dict(), transformers.BertConfig().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id",
                "position_embedding_type", "use_cache", "classifier_dropout", "is_decoder", "add_cross_attention",
                "tie_word_embeddings"):
        assert ours[key] == theirs[key], key
    # And HF reads what we write.
    hf = transformers.BertConfig.from_dict(BertConfig(num_labels=4, hidden_act="gelu_new").to_dict())
    assert hf.num_labels == 4 and hf.hidden_act == "gelu_new"


def test_num_labels_override_replaces_stored_labels():
    cfg = BertConfig(id2label={0: "a", 1: "b", 2: "c"})
    assert cfg.replace(num_labels=2).id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert BertConfig.from_dict(cfg.to_dict(), num_labels=5).num_labels == 5
    assert cfg.replace(hidden_size=48, num_attention_heads=4).id2label == cfg.id2label


@pytest.mark.parametrize("field,value,expected", [
    ("hidden_act", ["gelu"], "expected str"),
    ("pad_token_id", "0", "expected int or None"),
    ("label2id", [1, 2], "expected mapping or None"),
    ("classifier_dropout", "abc", "expected float or None"),
    ("hidden_size", 32.0, "expected int"),
    ("use_cache", "yes", "expected bool"),
    ("is_decoder", 1, "expected bool"),
    ("layer_norm_eps", True, "expected float"),
    ("architectures", "BertModel", "expected list of str"),
    ("num_labels", "3", "expected int or None"),
])
def test_wrong_type_names_field_value_and_type(field, value, expected):
    with pytest.raises(ValueError) as e:
        BertConfig.from_dict({field: value})
    msg = str(e.value)
    assert f"BertConfig.{field}={value!r}" in msg and expected in msg, msg


def test_every_documented_field_has_a_type():
    from bert_common.config import _DEFAULTS, FIELD_TYPES
    assert set(_DEFAULTS) <= set(FIELD_TYPES)


@pytest.mark.parametrize("labels,needle", [
    ({"id2label": {"a": "x"}}, "label id 'a'"),
    ({"id2label": {"0": 5}}, "label name 5"),
    ({"label2id": {"x": "y"}}, "label id 'y'"),
])
def test_label_maps_are_checked(labels, needle):
    with pytest.raises(ValueError, match=needle):
        BertConfig.from_dict(labels)


def test_hostile_config_files_are_refused_with_the_cap(tmp_path):
    from bert_common.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
    deep = tmp_path / "deep.json"
    deep.write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=f"deep.json: config nests 100001 deep, over the cap of {MAX_CONFIG_DEPTH}"):
        BertConfig.from_json_file(deep)
    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "a" * (MAX_CONFIG_BYTES + 10) + '"}')
    with pytest.raises(ValueError, match=f"big.json: config is over the cap of {MAX_CONFIG_BYTES} bytes"):
        BertConfig.from_json_file(big)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"hidden_act": "g\xe9lu"}')
    with pytest.raises(ValueError, match="latin.json: config is not UTF-8"):
        BertConfig.from_json_file(latin)
    typed = tmp_path / "typed.json"
    typed.write_text('{"pad_token_id": "0"}')
    with pytest.raises(ValueError, match="typed.json: BertConfig.pad_token_id='0'"):
        BertConfig.from_json_file(typed)
