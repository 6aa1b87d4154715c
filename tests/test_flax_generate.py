"""bert_flax generate with its fixed-size cache (bert_flax._jit.fixed_cache_step): the same tokens as the
torch backend's generate on the same weights, and 32 new tokens compile the forward at most twice
(the prompt, then one shape for every decode step)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")

from bert_common.testing import random_weights, tiny_config  # noqa: E402
from bert_flax._jit import fixed_cache_step  # noqa: E402
from bert_flax.modeling import build  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # CPU compile several times faster, same fp32 ops


@pytest.mark.parametrize("variant,overrides", [("decoder", {}),
                                               ("cross_attention", {"position_embedding_type": "relative_key_query"})])
def test_generate_32_tokens_compiles_twice_and_equals_torch(variant, overrides):
    torch_modeling = pytest.importorskip("bert_torch.modeling")
    torch = pytest.importorskip("torch")
    config = tiny_config(variant, **overrides)
    weights = random_weights(config, "BertLMHeadModel", seed=1)
    model = build("BertLMHeadModel", config, weights, compiler_options=FAST_COMPILE)
    ref = torch_modeling.build("BertLMHeadModel", config, weights).eval()
    prompt = np.array([[0, 0, 5, 17, 42], [8, 9, 10, 11, 12]], np.int64)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int64)  # left padding in the first row
    enc = {}
    if config.add_cross_attention:
        enc = {"encoder_hidden_states": np.random.default_rng(0).normal(size=(2, 3, 32)).astype(np.float32),
               "encoder_attention_mask": np.array([[1, 1, 0], [1, 1, 1]], np.int64)}
    got = model.generate(prompt, mask, max_new_tokens=32, **enc)
    assert got.shape == (2, 37) and model.trace_count == 2
    want = ref.generate(prompt, mask, max_new_tokens=32, **{k: torch.from_numpy(v) for k, v in enc.items()})
    np.testing.assert_array_equal(got, want)
    # Another prompt of the same shape, sampled: no new compile.
    model.generate(prompt[::-1], mask[::-1], max_new_tokens=32, do_sample=True, top_k=5, seed=1, **enc)
    assert model.trace_count == 2


def test_fixed_cache_only_inside_max_positions():
    model = build("BertLMHeadModel", tiny_config("decoder"), compiler_options=FAST_COMPILE)
    M = model.config.max_position_embeddings
    assert fixed_cache_step(model, np.zeros((1, 4), np.int64), M - 4) is not None
    # Past the limit the growing cache runs (and stops with the usual ValueError when it gets there).
    assert fixed_cache_step(model, np.zeros((1, 4), np.int64), M - 3) is None
    assert fixed_cache_step(model, np.zeros((4,), np.int64), 3) is None   # the loop names the bad shape
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model.generate(np.zeros((4,), np.int64), max_new_tokens=3)
