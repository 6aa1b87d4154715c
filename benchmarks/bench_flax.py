"""Jitted inference time of bert_flax vs Hugging Face's FlaxBertModel under jax.jit, in one run.

BERT-base shapes by default (12 layers, hidden 768, 12 heads, intermediate 3072, vocab 30522), batch 8,
sequence 128, fp32, the same random weights in both (our params pytree *is* HF's Flax tree for
BertModel). Prints per-call medians and the ratio ours / HF (goal <= 1.0):

    python benchmarks/bench_flax.py [--batch 8] [--seq 128] [--layers 12] [--repeats 10]

Three timings: ``ours.apply`` under the caller's ``jax.jit`` (the like-for-like comparison),
``ours(...)`` (the model call: host-side validation + the model's own cached jit), and HF's
``FlaxBertModel.__call__`` under ``jax.jit``. Needs transformers (benchmark-only oracle).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _interleaved_times(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median s, min s)}. Calls alternate between the functions round by round, so a noisy,
    shared machine slows all of them alike; ``min`` is the least disturbed run."""
    for fn in fns.values():  # compile + warm-up
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    import transformers

    from bert_common.config import BertConfig
    from bert_flax import BertModel

    config = BertConfig(num_hidden_layers=args.layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = BertModel(config, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[-1, args.seq // 2:] = 0
    types = np.zeros_like(ids)

    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "attn_implementation"})
    hf = transformers.FlaxBertModel(hf_config, input_shape=(1, args.seq), seed=0, _do_init=False)
    params = ours.params  # identical tree: embeddings / encoder / pooler with kernel, embedding, scale

    ours_jit = jax.jit(lambda p, i, m, t: ours.apply(p, input_ids=i, attention_mask=m, token_type_ids=t,
                                                     check="off")["last_hidden_state"])
    hf_jit = jax.jit(lambda p, i, m, t: hf(i, attention_mask=m, token_type_ids=t, params=p)[0])
    dev = [jax.device_put(x) for x in (ids, mask, types)]

    # Same numbers first: a benchmark of two different computations would mean nothing.
    diff = float(jnp.max(jnp.abs(ours_jit(params, *dev) - hf_jit(params, *dev))[:-1]))
    t = _interleaved_times({
        "hf": lambda: hf_jit(params, *dev),
        "apply": lambda: ours_jit(params, *dev),
        "call": lambda: ours(ids, attention_mask=mask, token_type_ids=types).last_hidden_state,
    }, args.repeats)
    result = {"device": jax.devices()[0].device_kind, "platform": platform.machine(), "batch": args.batch,
              "seq": args.seq, "layers": args.layers, "max_abs_diff": diff}
    for name, (med, best) in t.items():
        result[f"{name}_median_ms"], result[f"{name}_min_ms"] = 1e3 * med, 1e3 * best
    for name in ("apply", "call"):
        result[f"ratio_{name}_median"] = t[name][0] / t["hf"][0]
        result[f"ratio_{name}_min"] = t[name][1] / t["hf"][1]
    print(f"device {result['device']} | BERT layers={args.layers} batch={args.batch} seq={args.seq} fp32 | "
          f"{args.repeats} interleaved rounds | max |ours - HF| = {diff:.2e}")
    print(f"{'':34s}{'median ms':>12s}{'min ms':>10s}{'ratio med':>11s}{'ratio min':>11s}")
    rows = (("HF FlaxBertModel (jax.jit)", "hf"), ("bert_flax apply (jax.jit)", "apply"),
            ("bert_flax model(...) (own jit)", "call"))
    for label, name in rows:
        ratio = ("" if name == "hf" else
                 f"{result[f'ratio_{name}_median']:11.3f}{result[f'ratio_{name}_min']:11.3f}")
        print(f"{label:34s}{result[f'{name}_median_ms']:12.1f}{result[f'{name}_min_ms']:10.1f}{ratio}")
    return result


if __name__ == "__main__":
    main()
