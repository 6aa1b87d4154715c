"""bert_torch against the Hugging Face oracle (transformers' PyTorch BERT), both loading the same files.

For every head and every config variant of ``bert_common.testing.VARIANTS`` (tiny, odd-sized), and for the
real all-MiniLM-L6-v2 checkpoint, every output (each hidden state, each attention map, pooler, logits,
loss) agrees to max |Δ| ≤ 1e-5 on kept positions, and d loss / d parameter agrees to 1e-5 relative.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import bert_torch  # noqa: E402
from bert_common.checkpoint import save_checkpoint  # noqa: E402
from bert_common.testing import VARIANTS, random_inputs, random_weights, tiny_config  # noqa: E402
from bert_common.weights import MODEL_CLASSES  # noqa: E402
from conformance.adapters import hf as hf_adapter  # noqa: E402
from conformance.adapters import torch as torch_adapter  # noqa: E402

pytestmark = pytest.mark.oracle

ATOL = 1e-5
GRAD_RTOL = 1e-5
# HF's BertForPreTraining & co. take no encoder states and crash collecting cross-attentions without
# them, so the cross-attention variant is compared on the classes that take encoder states.
CROSS_CLASSES = ("BertModel", "BertLMHeadModel", "BertForMaskedLM")
CASES = [(v, c) for v in VARIANTS for c in MODEL_CLASSES if v != "cross_attention" or c in CROSS_CLASSES]


def config_for(variant: str, model_class: str):
    # Question answering splits its logits into start/end, so it needs exactly two labels.
    return tiny_config(variant, num_labels=2) if model_class == "BertForQuestionAnswering" else tiny_config(variant)


def inputs_for(config, model_class: str) -> dict:
    inp = random_inputs(config, model_class)
    if config.add_cross_attention and model_class in CROSS_CLASSES and "encoder_hidden_states" not in inp:
        # BertForMaskedLM takes encoder states too (HF does), though random_inputs gives them only to
        # BertModel / BertLMHeadModel.
        enc = random_inputs(config, "BertModel", labels=False)
        inp.update({k: enc[k] for k in ("encoder_hidden_states", "encoder_attention_mask")})
    return inp


def kept(name: str, arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero every padded position of an output, so only kept positions are compared.

    ``mask`` (B, S) or (B, C, S). Sequence axis: 1 for (B, S, ...) tensors, 2 for attention maps (query
    rows) and cached keys/values (key rows)."""
    m = mask.reshape(-1, mask.shape[-1]).astype(arr.dtype)                                   # B',S
    top = name.split(".")[0]
    if top in ("attentions", "past_key_values", "cross_attentions"):
        if top == "past_key_values" and int(name.split(".")[2]) >= 2:
            return arr  # cached cross-attention keys/values: encoder positions, no decoder mask
        return arr * m[:, None, :, None]
    if arr.ndim >= 2 and arr.shape[:2] == m.shape:
        return arr * m.reshape(m.shape + (1,) * (arr.ndim - 2))
    return arr


def assert_outputs_close(ours: dict, ref: dict, mask: np.ndarray, atol: float = ATOL) -> float:
    assert set(ours) == set(ref), f"output fields differ: {sorted(set(ours) ^ set(ref))}"
    worst = 0.0
    for name in ref:
        assert ours[name].shape == ref[name].shape, (name, ours[name].shape, ref[name].shape)
        d = float(np.max(np.abs(kept(name, ours[name], mask) - kept(name, ref[name], mask)), initial=0.0))
        assert d <= atol, f"{name}: max |Δ| = {d:.3g} > {atol}"
        worst = max(worst, d)
    return worst


def assert_grads_close(ours: dict, ref: dict) -> None:
    """Every tensor: max |Δ| ≤ 1e-5 × max |g_ref|. Tensors whose gradient is analytically zero (key
    biases: softmax ignores a per-row constant; the QA bias: softmax gradients sum to zero) hold only
    rounding noise, so they must stay below 1e-6 × the largest gradient of the model in both."""
    assert set(ours) == set(ref)
    scale = max(float(np.abs(g).max()) for g in ref.values())
    for name, g_ref in ref.items():
        top = float(np.abs(g_ref).max())
        if top <= 1e-6 * scale:
            assert float(np.abs(ours[name]).max()) <= 1e-6 * scale, name
            continue
        rel = float(np.abs(ours[name] - g_ref).max()) / top
        assert rel <= GRAD_RTOL, f"d loss / d {name}: relative error {rel:.3g}"


def load_both(tmp_path, model_class, config, state, attn="eager"):
    """Write one safetensors checkpoint; load it with bert_torch and with transformers."""
    save_checkpoint(tmp_path, config, state)
    ours = getattr(bert_torch, model_class).from_pretrained(tmp_path, attn_implementation=attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(transformers, model_class).from_pretrained(tmp_path, attn_implementation="eager")
    return ours, ref.eval()


@pytest.mark.parametrize("variant,model_class", CASES)
def test_outputs_and_grads_match_oracle(tmp_path, variant, model_class):
    config = config_for(variant, model_class)
    state = random_weights(config, model_class, seed=1)
    inp = inputs_for(config, model_class)
    ours, ref = load_both(tmp_path, model_class, config, state, attn="eager")
    a = torch_adapter.forward(ours, inp)
    b = hf_adapter.forward(ref, inp)
    assert "hidden_states.2" in b and "attentions.1" in b  # every layer's outputs are compared
    assert_outputs_close(a, b, inp["attention_mask"])
    if model_class != "BertModel":
        assert np.isfinite(a["loss"]) and "loss" in b
        loss_a, grads_a = torch_adapter.grads(ours, inp)
        loss_b, grads_b = hf_adapter.grads(ref, inp)
        assert abs(loss_a - loss_b) <= ATOL
        assert_grads_close(grads_a, grads_b)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sdpa_path_matches_oracle(tmp_path, variant):
    """The fused path (default) agrees with the eager oracle; no attention maps are requested, so it
    really runs SDPA (relative scores folded into the bias)."""
    model_class = "BertLMHeadModel" if VARIANTS[variant].get("is_decoder") else "BertForMaskedLM"
    config = tiny_config(variant)
    state = random_weights(config, model_class, seed=2)
    inp = random_inputs(config, model_class)
    ours, ref = load_both(tmp_path, model_class, config, state, attn="sdpa")
    assert ours.attn_implementation == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        a = torch_adapter.forward(ours, inp, output_attentions=False)
    b = hf_adapter.forward(ref, inp, output_attentions=False)
    assert_outputs_close(a, b, inp["attention_mask"])


def test_head_mask_inputs_embeds_position_ids_match_oracle(tmp_path):
    config = tiny_config("relative_key")
    state = random_weights(config, "BertForMaskedLM", seed=3)
    ours, ref = load_both(tmp_path, "BertForMaskedLM", config, state)
    rng = np.random.default_rng(0)
    inp = random_inputs(config, "BertForMaskedLM", labels=True)
    for head_mask in (np.array([1.0, 0.0, 0.5, 1.0], np.float32),               # (N,): shared by all layers
                      rng.random((config.num_hidden_layers, 4)).astype(np.float32)):  # (L, N)
        a = torch_adapter.forward(ours, {**inp, "head_mask": head_mask})
        b = hf_adapter.forward(ref, {**inp, "head_mask": head_mask})
        assert_outputs_close(a, b, inp["attention_mask"])
        if head_mask.ndim == 1:  # a zero entry silences that head in every layer
            assert all(np.all(a[f"attentions.{i}"][:, 1] == 0) for i in range(config.num_hidden_layers))
    embeds = (0.3 * rng.standard_normal((2, 7, config.hidden_size))).astype(np.float32)
    pos = np.array([[3, 4, 5, 6, 7, 8, 9], [0, 2, 4, 6, 8, 10, 12]], np.int64)
    for extra in ({"inputs_embeds": embeds}, {"position_ids": pos}):
        x = {k: v for k, v in inp.items() if not ("inputs_embeds" in extra and k == "input_ids")}
        a = torch_adapter.forward(ours, {**x, **extra})
        b = hf_adapter.forward(ref, {**x, **extra})
        assert_outputs_close(a, b, inp["attention_mask"])


@pytest.mark.parametrize("problem_type,labels", [
    ("regression", np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], np.float32)),
    ("multi_label_classification", np.array([[1, 0, 1], [0, 1, 1]], np.float32)),
    ("single_label_classification", np.array([2, 0], np.int64)),
])
def test_sequence_classification_problem_types_match_oracle(tmp_path, problem_type, labels):
    config = tiny_config(problem_type=problem_type)
    state = random_weights(config, "BertForSequenceClassification", seed=4)
    ours, ref = load_both(tmp_path, "BertForSequenceClassification", config, state)
    inp = {**random_inputs(config, "BertForSequenceClassification", labels=False), "labels": labels}
    a, b = torch_adapter.forward(ours, inp), hf_adapter.forward(ref, inp)
    assert_outputs_close(a, b, inp["attention_mask"])
    assert_grads_close(torch_adapter.grads(ours, inp)[1], hf_adapter.grads(ref, inp)[1])


def test_regression_with_one_label_matches_oracle(tmp_path):
    config = tiny_config(num_labels=1)  # problem_type inferred: regression
    state = random_weights(config, "BertForSequenceClassification", seed=5)
    ours, ref = load_both(tmp_path, "BertForSequenceClassification", config, state)
    inp = {**random_inputs(config, "BertForSequenceClassification", labels=False),
           "labels": np.array([0.25, -1.5], np.float32)}
    a, b = torch_adapter.forward(ours, inp), hf_adapter.forward(ref, inp)
    assert_outputs_close(a, b, inp["attention_mask"])
    assert ours.config.problem_type is None  # the config is not mutated


def test_all_ignored_labels_give_nan_like_oracle(tmp_path):
    config = tiny_config()
    state = random_weights(config, "BertForTokenClassification", seed=6)
    ours, ref = load_both(tmp_path, "BertForTokenClassification", config, state)
    inp = random_inputs(config, "BertForTokenClassification")
    inp["labels"] = np.full_like(inp["labels"], -100)
    assert np.isnan(torch_adapter.forward(ours, inp)["loss"]) and np.isnan(hf_adapter.forward(ref, inp)["loss"])


def test_minilm_checkpoint_matches_oracle(minilm_dir):
    path = minilm_dir
    ours = bert_torch.BertModel.from_pretrained(path, attn_implementation="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    config = ours.config
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, config.vocab_size, size=(2, 12), dtype=np.int64)
    ids[:, 0], ids[0, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    ids[1, 9:] = 0
    inp = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    a, b = torch_adapter.forward(ours, inp), hf_adapter.forward(ref, inp)
    assert len([k for k in a if k.startswith("attentions.")]) == config.num_hidden_layers
    assert_outputs_close(a, b, mask)
    # The default (SDPA) path on the real checkpoint too.
    fused = bert_torch.BertModel.from_pretrained(path)
    c = torch_adapter.forward(fused, inp, output_attentions=False, output_hidden_states=False)
    assert_outputs_close(c, {k: v for k, v in b.items() if k in c}, mask)


def test_minilm_with_new_head_outputs_and_grads_match_oracle(tmp_path, minilm_dir):
    """Encoder gradients on the real checkpoint: a classification head is initialised here, the whole
    model saved, and the oracle loads that file."""
    ours = bert_torch.BertForSequenceClassification.from_pretrained(minilm_dir, allow_new_head=True,
                                                                    attn_implementation="eager")
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager")
    ref.eval()
    rng = np.random.default_rng(8)
    ids = rng.integers(1000, ours.config.vocab_size, size=(2, 10), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    inp = {"input_ids": ids, "attention_mask": mask, "labels": np.array([1, 0], np.int64)}
    assert_outputs_close(torch_adapter.forward(ours, inp), hf_adapter.forward(ref, inp), mask)
    loss_a, grads_a = torch_adapter.grads(ours, inp)
    loss_b, grads_b = hf_adapter.grads(ref, inp)
    assert abs(loss_a - loss_b) <= ATOL
    assert len(grads_a) == len(list(ours.parameters())) and set(grads_a) == set(grads_b)
    assert_grads_close(grads_a, grads_b)
