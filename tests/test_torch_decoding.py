"""Cache protocol and generation: cached incremental decoding reproduces the full forward, and greedy
``generate`` reproduces the Hugging Face oracle's."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bert_torch  # noqa: E402
from bert_common.testing import random_inputs, random_weights, tiny_config  # noqa: E402
from bert_torch.modeling import build  # noqa: E402

ATOL = 1e-5


def lm(variant: str, attn: str = "eager", **overrides):
    config = tiny_config(variant, attn_implementation=attn, **overrides)
    return build("BertLMHeadModel", config, random_weights(config, "BertLMHeadModel", seed=11))


def decode_in_chunks(model, inp: dict, chunks: list[int], pass_encoder_every_step: bool = True) -> torch.Tensor:
    """Feed ``input_ids`` in pieces of the given lengths through the cache; (B, S, V) logits."""
    ids, mask = torch.from_numpy(inp["input_ids"]), torch.from_numpy(inp["attention_mask"])
    types = torch.from_numpy(inp["token_type_ids"])
    enc = {k: torch.from_numpy(inp[k]) for k in ("encoder_hidden_states", "encoder_attention_mask") if k in inp}
    past, logits, start = None, [], 0
    for n in chunks:
        step_enc = enc if (pass_encoder_every_step or past is None) else {
            "encoder_attention_mask": enc["encoder_attention_mask"]} if enc else {}
        out = model(ids[:, start:start + n], attention_mask=mask[:, :start + n],
                    token_type_ids=types[:, start:start + n], past_key_values=past, use_cache=True, **step_enc)
        past = out.past_key_values
        logits.append(out.logits)
        start += n
    assert start == ids.shape[1]
    return torch.cat(logits, dim=1)


@torch.no_grad()
def full_logits(model, inp: dict) -> torch.Tensor:
    return model(**{k: v for k, v in inp.items() if k != "labels"}, use_cache=False).logits


def max_kept_diff(a: torch.Tensor, b: torch.Tensor, mask: np.ndarray) -> float:
    m = torch.from_numpy(mask)[..., None].to(a.dtype)
    return float(((a - b) * m).abs().max())


@pytest.mark.parametrize("variant", ["decoder", "cross_attention", "relative_key", "relative_key_query"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_decoding_equals_full_forward(variant, attn):
    model = lm(variant, attn, is_decoder=True)
    inp = random_inputs(model.config, "BertLMHeadModel", seq=9, labels=False)
    ref = full_logits(model, inp)
    with torch.no_grad():
        one_by_one = decode_in_chunks(model, inp, [4, 1, 1, 1, 1, 1])
        # Chunks longer than one token: query positions are P + arange(S), also for relative distances.
        chunked = decode_in_chunks(model, inp, [3, 2, 4])
    assert max_kept_diff(one_by_one, ref, inp["attention_mask"]) <= ATOL
    assert max_kept_diff(chunked, ref, inp["attention_mask"]) <= ATOL


def test_cross_attention_cache_reused_without_encoder_states():
    """Cross keys/values are computed once; later steps may omit encoder_hidden_states."""
    model = lm("cross_attention")
    inp = random_inputs(model.config, "BertLMHeadModel", seq=6, labels=False)
    with torch.no_grad():
        ref = full_logits(model, inp)
        out = decode_in_chunks(model, inp, [3, 1, 1, 1], pass_encoder_every_step=False)
    assert max_kept_diff(out, ref, inp["attention_mask"]) <= ATOL
    with torch.no_grad():
        first = model(torch.from_numpy(inp["input_ids"][:, :3]), encoder_hidden_states=inp["encoder_hidden_states"],
                  use_cache=True)
    layer0 = first.past_key_values[0]
    assert len(layer0) == 4 and tuple(layer0[2].shape) == (2, 4, 5, 8)  # (B, N, E, D)


@pytest.mark.oracle
def test_cache_matches_oracle_cache():
    transformers = pytest.importorskip("transformers")
    from conformance.adapters import hf as hf_adapter
    from conformance.adapters import torch as torch_adapter
    config = tiny_config("cross_attention")
    state = random_weights(config, "BertLMHeadModel", seed=12)
    ours = torch_adapter.build("BertLMHeadModel", config, state)
    ref = hf_adapter.build("BertLMHeadModel", config, state)
    inp = random_inputs(config, "BertLMHeadModel", seq=5, labels=False)
    first = {**inp, "input_ids": inp["input_ids"][:, :4], "attention_mask": inp["attention_mask"][:, :4],
             "token_type_ids": inp["token_type_ids"][:, :4]}
    a = torch_adapter.forward(ours, first, use_cache=True)
    b = hf_adapter.forward(ref, first, use_cache=True)
    assert {k for k in a if k.startswith("past_key_values.")} == {k for k in b if k.startswith("past_key_values.")}
    assert max(float(np.abs(a[k] - b[k]).max()) for k in b) <= ATOL
    past = tuple(tuple(a[f"past_key_values.{i}.{j}"] for j in range(4)) for i in range(config.num_hidden_layers))
    step = {**inp, "input_ids": inp["input_ids"][:, 4:], "token_type_ids": inp["token_type_ids"][:, 4:]}
    a2 = torch_adapter.forward(ours, step, use_cache=True, past_key_values=past)
    b2 = hf_adapter.forward(ref, step, use_cache=True, past_key_values=past)
    assert max(float(np.abs(a2[k] - b2[k]).max()) for k in b2) <= ATOL
    assert transformers.__version__ == "4.57.1"


def oracle_greedy(ref, ids: np.ndarray, n: int, **enc) -> np.ndarray:
    """Greedy continuation by n full (uncached) oracle forwards."""
    out = torch.from_numpy(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = ref(out, use_cache=False, **enc).logits
            out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out.numpy()


@pytest.mark.oracle
@pytest.mark.parametrize("variant", ["decoder", "cross_attention"])
def test_greedy_generate_equals_oracle(variant):
    pytest.importorskip("transformers")
    from conformance.adapters import hf as hf_adapter
    config = tiny_config(variant)
    state = random_weights(config, "BertLMHeadModel", seed=13)
    ours = build("BertLMHeadModel", config, state)
    ref = hf_adapter.build("BertLMHeadModel", config, state)
    inp = random_inputs(config, "BertLMHeadModel", seq=5, labels=False)
    ids = inp["input_ids"][:1]
    enc = {k: torch.from_numpy(inp[k][:1]) for k in ("encoder_hidden_states",) if k in inp}
    got = ours.generate(ids, max_new_tokens=12, **enc)
    assert got.shape == (1, 17)
    np.testing.assert_array_equal(got, oracle_greedy(ref, ids, 12, **enc))
    if variant == "decoder":
        # HF's own cached generate (4.57.1 appends cross-attention keys again on every step, so its
        # cross-attention generate is not a usable oracle; the uncached loop above is).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ref.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                max_new_tokens=12, do_sample=False, pad_token_id=0).numpy()
        np.testing.assert_array_equal(got, want)


def test_sampling_is_seeded_and_eos_stops_a_row():
    model = lm("decoder")
    ids = random_inputs(model.config, "BertLMHeadModel", seq=4, labels=False)["input_ids"]
    a = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, seed=3)
    b = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, seed=3)
    c = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=5.0, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = model.generate(ids, max_new_tokens=8)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=9), greedy)
    eos = int(greedy[0, 5])  # the second generated token of row 0
    stopped = model.generate(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(stopped[0, :6], greedy[0, :6])
    first_eos = [int(np.argmax(row[4:] == eos)) + 4 if np.any(row[4:] == eos) else None for row in stopped]
    assert np.all(stopped[0, first_eos[0] + 1:] == 0)
    assert stopped.shape[1] <= greedy.shape[1]


def test_generate_needs_a_decoder():
    config = tiny_config()
    model = build("BertLMHeadModel", config, random_weights(config, "BertLMHeadModel"))
    with pytest.raises(ValueError, match="is_decoder"):
        model.generate(np.array([[5, 6, 7]]), max_new_tokens=2)


def test_cache_is_refused_for_an_encoder():
    config = tiny_config()
    model = build("BertModel", config, random_weights(config))
    past = tuple((torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8)) for _ in range(2))
    with pytest.raises(ValueError, match="is_decoder"):
        model(np.array([[5]]), past_key_values=past)
    assert model(np.array([[5, 6]]), use_cache=True).past_key_values is None  # HF: encoders return no cache
