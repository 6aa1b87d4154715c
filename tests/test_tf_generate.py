"""bert_tf ``generate`` with the fixed-size cache (bert_tf._generate): two XLA programs (prompt and step)
for 32 tokens, the same tokens as the growing cache and as bert_torch, programs reused across calls."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import bert_tf  # noqa: E402
from bert_common.testing import random_weights, tiny_config  # noqa: E402


def _growing_generate(model, prompt, mask, n, **enc):
    """Greedy decoding with the ordinary growing cache (user-visible past_key_values), one token a step."""
    ids, mask, past, feed = prompt, mask, None, prompt
    for _ in range(n):
        out = model(input_ids=feed, attention_mask=mask, past_key_values=past, use_cache=True, **enc)
        nxt = out.logits.numpy()[:, -1].argmax(-1)[:, None]
        ids, mask = np.concatenate([ids, nxt], 1), np.concatenate([mask, np.ones_like(nxt)], 1)
        past, feed = out.past_key_values, nxt
    return ids


@pytest.mark.slow
def test_generate_32_tokens_compiles_twice_and_equals_torch():
    """The hardest cache case (cross-attention, relative_key_query, a padded prompt); the plain decoder
    is compared with bert_torch in test_tf_model."""
    cfg = tiny_config("cross_attention", position_embedding_type="relative_key_query")
    state = random_weights(cfg, "BertLMHeadModel", seed=6)
    model = bert_tf.build("BertLMHeadModel", cfg, state)
    prompt = np.array([[5, 17, 42, 3], [7, 8, 9, 0]], np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)
    enc = {}
    if cfg.add_cross_attention:
        enc["encoder_hidden_states"] = np.random.default_rng(1).standard_normal((2, 5, 32)).astype(np.float32)
        enc["encoder_attention_mask"] = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.int64)
    got = model.generate(prompt, attention_mask=mask, max_new_tokens=32, **enc)
    assert got.shape == (2, 36)
    assert model._fixed_cache_decoder.trace_count == 2                      # prompt + step, not one per token
    # A second call of a nearby length reuses both programs (the window is rounded up: 33 -> 63 slots).
    again = model.generate(prompt, attention_mask=mask, max_new_tokens=31, **enc)
    np.testing.assert_array_equal(again, got[:, :35])
    assert model._fixed_cache_decoder.trace_count == 2
    torch_backend = pytest.importorskip("bert_torch")
    import torch
    theirs = torch_backend.BertLMHeadModel(cfg)
    theirs.load_canonical_state_dict(state)
    want = theirs.generate(prompt, attention_mask=mask, max_new_tokens=32,
                           **{k: torch.from_numpy(v) for k, v in enc.items()})
    np.testing.assert_array_equal(got, np.asarray(want))


def test_generate_falls_back_to_the_growing_cache_past_max_positions():
    """A sequence that would outgrow max_position_embeddings runs the growing cache, which raises the
    length error at the step that overflows (as before); within the limit the fixed cache runs."""
    cfg = tiny_config("decoder", max_position_embeddings=12)
    model = bert_tf.build("BertLMHeadModel", cfg, random_weights(cfg, "BertLMHeadModel", seed=2))
    prompt = np.array([[5, 17, 42, 3]], np.int64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(prompt, max_new_tokens=10)   # 4 + 10 - 1 = 13 positions > 12
    assert getattr(model, "_fixed_cache_decoder", None) is None
    out = model.generate(prompt, max_new_tokens=9)  # 12 positions: the last window is full
    assert model._fixed_cache_decoder.trace_count == 2
    np.testing.assert_array_equal(out, _growing_generate(model, prompt, np.ones_like(prompt), 9))
    model.generate(prompt, max_new_tokens=3)        # short: eager steps, no new program
    model.config.eos_token_id = 7                   # generation-only: the programs stay
    model.generate(prompt, max_new_tokens=8)
    assert model._fixed_cache_decoder.trace_count == 2
    with pytest.raises(ValueError, match="input_ids contains 99"):  # validated on the host before XLA
        model.generate(np.array([[5, 99]]), max_new_tokens=9)
