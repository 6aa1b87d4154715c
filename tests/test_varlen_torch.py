"""bert_torch with ``attn_implementation="varlen"``: the unpadded path (and the in-graph segments path)
equals the padded eager path on kept tokens for every head and position type, forward and backward;
packed rows (position ids restarting at 0) equal each sequence run alone; the errors varlen raises."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bert_common import varlen  # noqa: E402
from bert_common.testing import random_weights, tiny_config  # noqa: E402
from bert_common.weights import MODEL_CLASSES  # noqa: E402
from bert_torch.modeling import build  # noqa: E402

VARIANTS = ("absolute", "relative_key", "relative_key_query", "decoder")
B, S, C = 4, 9, 3
# Rows of different lengths: full, right-padded, a single token, left-padded.
LENGTHS = (9, 5, 1, 7)
LEFT = (False, False, False, True)
# fp32 on the tiny config, over the whole matrix below: the largest differences seen were 3.1e-6 (outputs)
# and 4.5e-6 x max(1, |gradient|) (gradients).
ATOL = 1e-5


def pair(model_class, variant, seed=7, **overrides):
    """(padded eager model, varlen model) with the same weights."""
    if model_class == "BertForQuestionAnswering":
        overrides.setdefault("num_labels", 2)
    config = tiny_config(variant, **overrides)
    state = random_weights(config, model_class, seed=seed)
    ref = build(model_class, tiny_config(variant, attn_implementation="eager", **overrides), state)
    return ref, build(model_class, tiny_config(variant, attn_implementation="varlen", **overrides), state)


def padded_batch(model_class, seed=0):
    """ids, token types, mask: (B, S), or (B, C, S) for multiple choice (every choice its own length)."""
    rng = np.random.default_rng(seed)
    rows = B * C if model_class == "BertForMultipleChoice" else B
    mask = np.zeros((rows, S), np.int64)
    for r in range(rows):
        n = LENGTHS[r % B]
        if LEFT[r % B]:
            mask[r, S - n:] = 1
        else:
            mask[r, :n] = 1
    ids = rng.integers(1, 99, size=(rows, S)) * mask
    types = (rng.random((rows, S)) < 0.5) * mask
    lead = (B, C, S) if model_class == "BertForMultipleChoice" else (B, S)
    return {"input_ids": ids.reshape(lead), "token_type_ids": types.reshape(lead),
            "attention_mask": mask.reshape(lead)}


def kept(out, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """Every output the two paths must agree on: per-token tensors at kept tokens; pooled ones (and
    multiple-choice logits) for the rows whose column 0 is kept (the pooler reads column 0, a pad token
    in a left-padded row of the padded path)."""
    flat = torch.from_numpy(mask.reshape(-1, mask.shape[-1]) != 0)
    first = flat[:, 0]
    got = {}
    for name, value in out.items():
        if name in ("loss", "past_key_values", "attentions"):
            continue
        for i, t in enumerate(value if isinstance(value, tuple) else (value,)):
            if t.shape[:2] == flat.shape:
                got[f"{name}{i}"] = t[flat]
            elif mask.ndim == 3 and t.shape == mask.shape[:2]:  # multiple-choice logits (B, C)
                got[f"{name}{i}"] = t.reshape(-1)[first]
            else:
                got[f"{name}{i}"] = t[first]
    return got


def weighted_sum(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """One scalar loss touching every compared output (fixed random weights, so no term cancels)."""
    gen = torch.Generator().manual_seed(0)
    return sum((t * torch.randn(t.shape, generator=gen)).sum() for _, t in sorted(parts.items()))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, atol=ATOL, what=""):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_unpadded_equals_padded_on_kept_tokens_forward_and_backward(model_class, variant):
    ref, vl = pair(model_class, variant)
    inp = padded_batch(model_class)
    outs = [m(**inp, output_hidden_states=True) for m in (ref, vl)]
    parts = [kept(o, inp["attention_mask"]) for o in outs]
    assert parts[0].keys() == parts[1].keys() and parts[0]
    for name in parts[0]:
        assert_close(parts[1][name], parts[0][name], what=name)
    # outputs at dropped tokens are 0 (the scatter back)
    drop = torch.from_numpy(inp["attention_mask"].reshape(-1, S) == 0)
    assert (outs[1].hidden_states[-1][drop] == 0).all()
    for model, p in zip((ref, vl), parts):
        weighted_sum(p).backward()
    g_ref, g_vl = grads(ref), grads(vl)
    assert g_ref.keys() == g_vl.keys() and len(g_ref) > 10
    for name in g_ref:  # gradients of a sum over many logits reach ~10: the bound scales with them
        scale = max(1.0, g_ref[name].abs().max().item())
        assert_close(g_vl[name], g_ref[name], atol=ATOL * scale, what=name)


@pytest.mark.parametrize("model_class", ["BertForPreTraining", "BertForSequenceClassification",
                                         "BertForTokenClassification"])
def test_head_losses_equal_on_right_padded_batches(model_class):
    """The heads' own losses (labels on kept tokens, pooled rows reading a kept column 0). Not question
    answering: its loss is a softmax over every column, dropped ones included (HF), whose logits differ."""
    ref, vl = pair(model_class, "relative_key_query")
    inp = padded_batch(model_class)
    right = {k: v[:3] for k, v in inp.items()}  # rows 0-2 are right-padded
    rng = np.random.default_rng(1)
    mask = right["attention_mask"]
    labels = {
        "BertForPreTraining": {"labels": np.where(mask == 1, rng.integers(0, 99, mask.shape), -100),
                               "next_sentence_label": np.array([0, 1, 1])},
        "BertForSequenceClassification": {"labels": np.array([2, 0, 1])},
        "BertForTokenClassification": {"labels": np.where(mask == 1, rng.integers(0, 3, mask.shape), -100)},
    }[model_class]
    losses = [m(**right, **labels).loss for m in (ref, vl)]
    assert_close(losses[1], losses[0], what="loss")


def test_head_mask_and_inputs_embeds_run_unpadded():
    """head_mask takes the explicit-scores block path (SDPA cannot scale probabilities); inputs_embeds
    are gathered like ids."""
    ref, vl = pair("BertModel", "relative_key")
    inp = padded_batch("BertModel")
    keep = torch.from_numpy(inp["attention_mask"] != 0)
    hm = np.array([[1, 0, 1, 0.5], [0, 1, 1, 1]], np.float32)
    a, b = ref(**inp, head_mask=hm), vl(**inp, head_mask=hm)
    assert_close(b.last_hidden_state[keep], a.last_hidden_state[keep])
    embeds = ref.embeddings.word_embeddings(torch.from_numpy(inp["input_ids"])).detach().numpy()
    e = vl(inputs_embeds=embeds, attention_mask=inp["attention_mask"], token_type_ids=inp["token_type_ids"])
    assert_close(e.last_hidden_state, vl(**inp).last_hidden_state)


@pytest.mark.parametrize("variant", ["relative_key_query", "decoder"])
def test_masks_with_holes_use_column_distances(variant):
    """A sequence whose kept tokens are not adjacent: relative distances and the causal rule follow
    columns, as in the padded path (the per-block (G, L, L) relative index)."""
    ref, vl = pair("BertModel", variant)
    mask = np.array([[1, 1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1, 0]])
    ids = np.arange(1, 15).reshape(2, 7)
    keep = torch.from_numpy(mask != 0)
    a, b = ref(ids, attention_mask=mask), vl(ids, attention_mask=mask)
    assert_close(b.last_hidden_state[keep], a.last_hidden_state[keep])


def test_gradient_checkpointing_carries_the_blocks():
    _, vl = pair("BertForMaskedLM", "relative_key_query")
    inp = padded_batch("BertForMaskedLM")
    labels = np.where(inp["attention_mask"] == 1, inp["input_ids"], -100)
    result = []
    for on in (False, True):
        vl.zero_grad()
        vl.train()
        if on:
            vl.gradient_checkpointing_enable()
        vl(**inp, labels=labels).loss.backward()
        result.append({n: p.grad.clone() for n, p in vl.named_parameters() if p.grad is not None})
    assert result[0].keys() == result[1].keys()
    for name in result[0]:
        torch.testing.assert_close(result[1][name], result[0][name], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------- packed rows
SEQS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]


def alone(model, seqs, types=None):
    """Each sequence run by itself through the padded path: (n_i, H) each."""
    out = []
    for i, s in enumerate(seqs):
        kw = {} if types is None else {"token_type_ids": np.asarray([types[i]])}
        out.append(model(np.asarray([s]), **kw).last_hidden_state[0])
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_row_equals_each_sequence_alone(variant):
    ref, vl = pair("BertModel", variant)
    types = [[0] * 3 + [1] * 2, [1, 1], [0] * 7]
    packed = varlen.pack(SEQS, token_type_ids=types)
    got = vl(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
             token_type_ids=packed["token_type_ids"]).last_hidden_state[0]
    want = torch.cat(alone(ref, SEQS, types))
    assert_close(got, want)
    # cut into padded rows of 8 tokens: position-id restarts and the mask together
    rows = varlen.pack(SEQS, row_tokens=8, token_type_ids=types)
    out = vl(**{k: rows[k] for k in ("input_ids", "position_ids", "attention_mask", "token_type_ids")})
    keep = torch.from_numpy(rows["attention_mask"] != 0)
    assert_close(out.last_hidden_state[keep], want)


@pytest.mark.parametrize("variant", ["absolute", "relative_key_query"])
def test_packed_row_longer_than_max_position_embeddings(variant):
    """Three 30-token sequences in one 90-token row (max_position_embeddings is 64): fine with position
    ids, in both modes (segments mode clips relative indices of cross-sequence pairs); refused without."""
    ref, vl = pair("BertModel", variant)
    rng = np.random.default_rng(3)
    seqs = [list(rng.integers(1, 99, 30)) for _ in range(3)]
    packed = varlen.pack(seqs)
    want = torch.cat(alone(ref, seqs))
    unpad = vl(input_ids=packed["input_ids"], position_ids=packed["position_ids"])
    segments = vl(input_ids=packed["input_ids"], position_ids=packed["position_ids"], output_attentions=True)
    assert_close(unpad.last_hidden_state[0], want)
    assert_close(segments.last_hidden_state[0], want)
    with pytest.raises(ValueError, match="sequence length 90 .*max_position_embeddings=64"):
        vl(input_ids=packed["input_ids"])


# ---------------------------------------------------------------------------------------------- segments mode
@pytest.mark.parametrize("variant", ["relative_key_query", "decoder"])
def test_segments_mode_equals_unpad_and_attends_within_sequences(variant):
    _, vl = pair("BertForTokenClassification", variant)
    rows = varlen.pack(SEQS, row_tokens=8)
    inp = {k: rows[k] for k in ("input_ids", "position_ids", "attention_mask")}
    unpad = vl(**inp, output_hidden_states=True)
    seg = vl(**inp, output_hidden_states=True, output_attentions=True)          # forces "segments"
    for a, b in zip(unpad.hidden_states + (unpad.logits,), seg.hidden_states + (seg.logits,)):
        assert_close(b, a)                                                        # dropped tokens: 0 in both
    ids = varlen.segment_ids(rows["attention_mask"], rows["position_ids"], rows["input_ids"].shape)
    same = torch.from_numpy((ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] > 0))   # B,S,S
    query_kept = torch.from_numpy(ids > 0)[:, :, None].expand_as(same)
    for probs in seg.attentions:                                                  # B,N,S,S
        assert probs.shape == (2, 4, 8, 8)
        across = (~same & query_kept)[:, None].expand_as(probs)
        assert (probs[across] == 0).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


@pytest.mark.slow
def test_compiled_model_takes_the_segments_path():
    """Under torch.compile the inputs are not host-visible: the in-graph segment mask runs (same numbers)."""
    _, vl = pair("BertModel", "relative_key")
    rows = varlen.pack(SEQS, row_tokens=8)
    inp = {k: torch.from_numpy(rows[k]) for k in ("input_ids", "position_ids", "attention_mask")}
    compiled = torch.compile(vl, backend="eager", fullgraph=False)
    with torch.no_grad():
        assert_close(compiled(**inp).last_hidden_state, vl(**inp).last_hidden_state)


# ---------------------------------------------------------------------------------------------- errors
def test_cache_and_encoder_states_are_refused():
    _, vl = pair("BertModel", "cross_attention")
    ids = np.array([[5, 6, 7]])
    with pytest.raises(ValueError, match="encoder_hidden_states cannot be used with attn_implementation='varlen'"):
        vl(ids, encoder_hidden_states=np.zeros((1, 2, 32), np.float32))
    past = tuple((torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8)) for _ in range(2))
    with pytest.raises(ValueError, match="past_key_values cannot be used with attn_implementation='varlen'"):
        vl(ids, past_key_values=past)
    assert vl(ids, use_cache=True).past_key_values is None  # varlen rows are not extended by a cache
