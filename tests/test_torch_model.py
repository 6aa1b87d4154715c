"""bert_torch behaviour that needs no oracle: construction, validation, dtypes, tuples, checkpointing,
SDPA fallback, masks, torch.compile — plus checkpoint round trips with the Hugging Face oracle."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bert_torch  # noqa: E402
from bert_common.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.weights import WeightMappingError, canonical_shapes, init_weights  # noqa: E402
from bert_torch.modeling import build  # noqa: E402


def model_of(model_class="BertModel", variant="absolute", seed=21, **overrides):
    config = tiny_config(variant, **overrides)
    return build(model_class, config, random_weights(config, model_class, seed=seed))


# ---------------------------------------------------------------------------------------------- construction
def test_fresh_model_holds_init_weights_and_ties_decoder():
    config = tiny_config()
    model = bert_torch.BertForMaskedLM(config, seed=5)
    state = model.canonical_state_dict()
    want = init_weights(config, "BertForMaskedLM", seed=5)
    assert list(state) == list(want) == list(canonical_shapes(config, "BertForMaskedLM"))
    for name in want:
        np.testing.assert_array_equal(state[name], want[name], err_msg=name)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert not model.training  # inference-ready


def test_add_pooling_layer_false_drops_pooler():
    config = tiny_config()
    model = bert_torch.BertModel(config, add_pooling_layer=False)
    assert not any(n.startswith("pooler.") for n in model.canonical_state_dict())
    out = model(np.array([[5, 6, 7]]))
    assert out.pooler_output is None and "pooler_output" not in out
    assert out.last_hidden_state.shape == (1, 3, config.hidden_size)


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels=3"):
        bert_torch.BertForQuestionAnswering(tiny_config())


# ---------------------------------------------------------------------------------------------- inputs
def test_numpy_and_torch_inputs_give_identical_outputs():
    model = model_of("BertForTokenClassification")
    inp = random_inputs(model.config, "BertForTokenClassification")
    a = model(**inp)
    b = model(**{k: torch.from_numpy(v) for k, v in inp.items()})
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_return_dict_false_gives_hf_tuple_layout():
    model = model_of("BertForSequenceClassification")
    inp = random_inputs(model.config, "BertForSequenceClassification")
    d = model(**inp, output_hidden_states=True)
    t = model(**inp, output_hidden_states=True, return_dict=False)
    assert isinstance(t, tuple) and len(t) == 3  # (loss, logits, hidden_states)
    assert torch.equal(t[0], d.loss) and torch.equal(t[1], d.logits) and len(t[2]) == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"input_ids": np.array([[1, 99, 3]])}, r"input_ids contains 99, outside the valid range \[0, 99\) set by config.vocab_size=99"),
    ({"input_ids": np.array([[1, -4, 3]])}, r"input_ids contains -4.*\[0, 99\)"),
    ({"input_ids": np.array([[1, 2]]), "token_type_ids": np.array([[0, 3]])}, r"token_type_ids contains 3.*config.type_vocab_size=3"),
    ({"input_ids": np.ones((1, 65), np.int64)}, r"input_ids has sequence length 65 .*config.max_position_embeddings=64"),
    ({"input_ids": np.array([[1, 2]]), "attention_mask": np.ones((1, 3))}, r"attention_mask has shape \(1, 3\) but must have shape \(1, 2\)"),
    ({"input_ids": np.array([[1, 2]]), "position_ids": np.array([[0, 64]])}, r"position_ids contains 64.*config.max_position_embeddings=64"),
    ({"input_ids": np.array([[1, 2]]), "head_mask": np.ones(5)}, r"head_mask has shape \(5,\).*\(4,\)"),
    ({"input_ids": np.array([[1, 2]]), "inputs_embeds": np.zeros((1, 2, 32))}, r"either input_ids or inputs_embeds"),
])
def test_bad_inputs_raise_before_any_kernel(kwargs, match):
    model = model_of("BertModel")
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_bad_inputs_raise_for_multiple_choice_and_cross_attention():
    mc = model_of("BertForMultipleChoice")
    with pytest.raises(ValueError, match=r"input_ids has shape \(2, 5\) but BertForMultipleChoice needs"):
        mc(np.ones((2, 5), np.int64))
    with pytest.raises(ValueError, match="input_ids contains 120"):
        mc(np.full((1, 2, 5), 120))
    lm = model_of("BertLMHeadModel", "cross_attention")
    with pytest.raises(ValueError, match=r"encoder_attention_mask has shape \(1, 4\) but encoder_hidden_states needs \(1, 5\)"):
        lm(np.array([[1, 2]]), encoder_hidden_states=np.zeros((1, 5, 32), np.float32),
           encoder_attention_mask=np.ones((1, 4)))
    enc = model_of("BertModel")
    with pytest.raises(ValueError, match="add_cross_attention=False"):
        enc(np.array([[1, 2]]), encoder_hidden_states=np.zeros((1, 5, 32), np.float32))


# ---------------------------------------------------------------------------------------------- numerics
def test_fully_masked_row_is_uniform_not_nan():
    model = model_of("BertModel", attn_implementation="eager")
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert torch.isfinite(out.last_hidden_state).all()
    torch.testing.assert_close(out.attentions[0][1], torch.full((4, 4, 4), 0.25), rtol=0, atol=1e-7)
    sdpa = model_of("BertModel", attn_implementation="sdpa")(ids, attention_mask=mask)
    torch.testing.assert_close(sdpa.last_hidden_state, out.last_hidden_state, rtol=0, atol=1e-5)


def test_sdpa_falls_back_to_eager_for_attentions_and_warns_once():
    eager = model_of("BertModel", "relative_key_query", attn_implementation="eager")
    sdpa = model_of("BertModel", "relative_key_query", attn_implementation="sdpa")
    inp = random_inputs(sdpa.config, labels=False)
    with pytest.warns(UserWarning, match="use the eager attention path"):
        a = sdpa(**inp, output_attentions=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second call: no new warning
        sdpa(**inp, head_mask=np.ones(4, np.float32))
    b = eager(**inp, output_attentions=True)
    for x, y in zip(a.attentions, b.attentions):
        assert torch.equal(x, y)


def test_gradient_checkpointing_gives_the_same_gradients():
    inp = random_inputs(tiny_config(), "BertForMaskedLM")
    grads = []
    for checkpointing in (False, True):
        model = model_of("BertForMaskedLM", hidden_dropout_prob=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**inp).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_from_pretrained(tmp_path, dtype):
    config = tiny_config()
    state = random_weights(config, "BertForMaskedLM", seed=22)
    save_checkpoint(tmp_path, config, state)
    ref = bert_torch.BertForMaskedLM.from_pretrained(tmp_path)
    half = bert_torch.BertForMaskedLM.from_pretrained(tmp_path, torch_dtype=dtype)
    assert half.dtype == dtype and half.cls.predictions.decoder.weight is half.bert.embeddings.word_embeddings.weight
    inp = random_inputs(config, "BertForMaskedLM")
    a, b = ref(**inp), half(**inp)  # the fused SDPA path in half precision
    assert b.logits.dtype == dtype
    with pytest.warns(UserWarning, match="eager attention path"):  # eager softmax (fp32) cast back
        probs = half(**inp, output_attentions=True).attentions[0]
    assert probs.dtype == dtype and torch.allclose(probs.float().sum(-1), torch.ones(()), atol=1e-2)
    keep = torch.from_numpy(inp["attention_mask"]).bool()
    err = (a.logits - b.logits.float())[keep].abs().max().item()
    # Measured: logits 0.054 / 0.0070, loss 0.0029 / 0.00054 (bf16 / fp16); bounds about 2x that.
    bound, loss_bound = (0.1, 0.01) if dtype == torch.bfloat16 else (0.02, 0.002)
    assert err < bound, err
    assert abs(a.loss.item() - b.loss.item()) < loss_bound


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = model_of("BertForSequenceClassification")
    inp = {k: torch.from_numpy(v) for k, v in random_inputs(model.config, "BertForSequenceClassification").items()}
    # aot_eager: Dynamo tracing + AOT autograd (where model code breaks under compile) in ~8 s; the default
    # inductor backend also passes this test but spends ~100 s compiling C++ on a 2-core CI machine.
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inp).logits, model(**inp).logits, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="input_ids contains 99"):
            compiled(**{**inp, "input_ids": torch.full_like(inp["input_ids"], 99)})


# ---------------------------------------------------------------------------------------------- checkpoints
def test_load_report_and_new_heads(tmp_path, caplog):
    config = tiny_config()
    save_checkpoint(tmp_path, config, random_weights(config, "BertModel", seed=23))
    with pytest.raises(WeightMappingError, match="allow_new_head=True"):
        bert_torch.BertForSequenceClassification.from_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="bertrio"):
        model = bert_torch.BertForSequenceClassification.from_pretrained(tmp_path, allow_new_head=True)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    assert model.load_report.initialized == ["classifier.weight", "classifier.bias"]
    base = bert_torch.BertModel.from_pretrained(tmp_path)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)


@pytest.mark.oracle
def test_save_pretrained_loads_in_oracle_and_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = tiny_config("relative_key_query")
    ours = build("BertForPreTraining", config, random_weights(config, "BertForPreTraining", seed=24))
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.BertForPreTraining.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    inp = random_inputs(config, "BertForPreTraining")
    torch_in = {k: torch.from_numpy(v) for k, v in inp.items()}
    a = ours(**inp, output_hidden_states=True)
    with torch.no_grad():
        b = ref(**torch_in, output_hidden_states=True)
    for field in ("loss", "prediction_logits", "seq_relationship_logits"):
        torch.testing.assert_close(a[field], b[field], rtol=0, atol=1e-5)
    # The reverse: the oracle's save_pretrained loads here with identical outputs.
    ref.save_pretrained(tmp_path / "hf")
    back = bert_torch.BertForPreTraining.from_pretrained(tmp_path / "hf")
    c = back(**inp)
    torch.testing.assert_close(c.prediction_logits, b.prediction_logits, rtol=0, atol=1e-5)
    _, state, _ = load_checkpoint(tmp_path / "ours")
    assert set(state) == set(canonical_shapes(config, "BertForPreTraining"))


def test_bfloat16_save_keeps_dtype(tmp_path):
    config = tiny_config()
    model = build("BertModel", config, random_weights(config)).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    _, state, _ = load_checkpoint(tmp_path)
    assert str(state["embeddings.word_embeddings.weight"].dtype) == "bfloat16"
    back = bert_torch.BertModel.from_pretrained(tmp_path, torch_dtype="bfloat16")
    assert torch.equal(back.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
