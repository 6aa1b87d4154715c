"""Inference time of bert_tf under XLA vs a baseline, BERT-base shapes (batch 8, seq 128, fp32).

Baseline, in order of preference: Hugging Face's TF BERT (``transformers.TFBertModel``, needs the legacy
``tf-keras`` package in this environment), else ``bert_torch.BertModel`` (torch eager, ``no_grad``), else
Hugging Face's torch ``BertModel`` (eager attention) when bert_torch is not available. Both models get the
same canonical weights and the same batch; the outputs are compared before timing so the two do the same
work. Prints one table and the ratio ``ours / baseline`` (goal: <= 1.0).

    python benchmarks/bench_tf.py [--batch 8] [--seq 128] [--layers 12] [--reps 10] [--threads N]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _timeit(fn, reps: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _baseline(config, state, ids, mask, types, threads):
    """(name, callable returning last_hidden_state as NumPy)."""
    from bert_common.checkpoint import save_checkpoint
    if importlib.util.find_spec("tf_keras") is not None and importlib.util.find_spec("transformers") is not None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        import tensorflow as tf
        from transformers import TFBertModel
        tmp = tempfile.mkdtemp()
        save_checkpoint(tmp, config, state)
        hf = TFBertModel.from_pretrained(tmp, from_pt=False, use_safetensors=True)
        f = tf.function(lambda a, b, c: hf(input_ids=a, attention_mask=b, token_type_ids=c).last_hidden_state,
                        jit_compile=True)
        args = [tf.constant(x) for x in (ids, mask, types)]
        return "HF TFBertModel (tf-keras, XLA)", lambda: f(*args).numpy()
    import torch
    torch.set_num_threads(threads)
    t_args = [torch.tensor(x) for x in (ids, mask, types)]
    try:
        import bert_torch
        model = bert_torch.BertModel(config)
        model.load_canonical_state_dict(state)
        model.eval()
        name = "bert_torch.BertModel (torch eager)"
    except (ImportError, AttributeError):
        from transformers import BertModel
        tmp = tempfile.mkdtemp()
        save_checkpoint(tmp, config, state)
        model = BertModel.from_pretrained(tmp, attn_implementation="eager").eval()
        name = "HF torch BertModel (eager; bert_torch not available)"

    def run():
        with torch.no_grad():
            return model(input_ids=t_args[0], attention_mask=t_args[1], token_type_ids=t_args[2])[0].numpy()
    return name, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    import bert_tf
    from bert_common.config import BertConfig
    from bert_common.weights import init_weights

    config = BertConfig(num_hidden_layers=args.layers)            # BERT-base: H 768, N 12, I 3072, V 30522
    state = init_weights(config, "BertModel", seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, config.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    ours = bert_tf.BertModel(config, _init=False)
    ours.load_canonical_state_dict(state)
    fwd = tf.function(lambda a, b, c: ours(input_ids=a, attention_mask=b, token_type_ids=c)["last_hidden_state"],
                      jit_compile=True)
    tf_args = [tf.constant(x) for x in (ids, mask, types)]
    t = time.perf_counter()
    ours_out = fwd(*tf_args).numpy()
    compile_s = time.perf_counter() - t
    base_name, base_fn = _baseline(config, state, ids, mask, types, args.threads)
    diff = float(np.abs(base_fn() - ours_out).max())
    # Interleave the two so drifting machine load hits both equally.
    ours_t, base_t = [], []
    for _ in range(args.reps):
        ours_t += _timeit(lambda: fwd(*tf_args).numpy(), 1, warmup=0 if ours_t else 2)
        base_t += _timeit(base_fn, 1, warmup=0 if base_t else 2)
    mo, mb = statistics.median(ours_t), statistics.median(base_t)
    dev = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({args.threads} threads)"
    print(f"BERT-base shapes: batch {args.batch}, seq {args.seq}, {args.layers} layers, fp32, {dev}")
    print(f"max |Δ| last_hidden_state, ours vs baseline: {diff:.2e}")
    print(f"{'model':55s} {'median s':>9s} {'min s':>9s}")
    print(f"{'bert_tf.BertModel (tf.function jit_compile=True)':55s} {mo:9.4f} {min(ours_t):9.4f}")
    print(f"{base_name:55s} {mb:9.4f} {min(base_t):9.4f}")
    print(f"XLA compile + first call: {compile_s:.1f} s")
    print(f"ratio ours / baseline (median): {mo / mb:.3f}  (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
