"""The case matrix: tiny configs × heads, and cases built from a real checkpoint. NumPy only."""
from __future__ import annotations

import os

import numpy as np

from bert_common.checkpoint import load_checkpoint
from bert_common.testing import VARIANTS, random_inputs, random_weights, tiny_config
from bert_common.weights import HEADS, fillable_classes, match_state_dict
from conformance.suite import CACHE_CLASSES, Case  # noqa: F401  (CACHE_CLASSES: re-exported)


def tiny_case(variant: str, model_class: str, seed: int = 0, batch: int = 2, seq: int = 7) -> Case:
    """Weights and batch generated once from a seed, identical for every backend."""
    # Question answering splits its logits into start/end: HF requires num_labels == 2 there.
    cfg = tiny_config(variant, **({"num_labels": 2} if model_class == "BertForQuestionAnswering" else {}))
    state = random_weights(cfg, model_class, seed=seed)
    inputs = random_inputs(cfg, model_class, batch=batch, seq=seq, seed=seed + 1)
    return Case(model_class, variant, cfg, state, inputs)


def matrix(variants=tuple(VARIANTS), classes=tuple(HEADS)) -> list[tuple[str, str]]:
    return [(v, c) for v in variants for c in classes]


SAMPLE_TEXTS = [
    ("The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps over a sleepy hound."),
    ("Parity tests catch silent numerical drift.", "Three frameworks, one set of numbers!"),
    ("Héllo wörld — naïve café, 東京 and 42 emojis 🎉.", "Short one."),
]


def _encode(path: str, config, batch: int, seq: int, num_choices: int, model_class: str) -> dict[str, np.ndarray]:
    """Real text through the checkpoint's own vocabulary when it has one, else seeded random ids.
    Multiple choice gets a different second segment per choice (identical choices would make every
    gradient exactly zero)."""
    if model_class == "BertForMultipleChoice":
        per_choice = [_encode(path, config, batch, seq, 0, f"choice{j}") for j in range(num_choices)]
        return {k: np.stack([c[k] for c in per_choice], axis=1) for k in per_choice[0]}
    shift = int(model_class[6:]) if model_class.startswith("choice") else 0
    pairs = [(SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)][0], SAMPLE_TEXTS[(i + shift) % len(SAMPLE_TEXTS)][1])
             for i in range(batch)]
    enc = None
    if os.path.isfile(os.path.join(path, "vocab.txt")):
        try:
            from bert_common import BertTokenizerFast
            tok = BertTokenizerFast.from_pretrained(path)
            enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding="max_length", truncation=True,
                      max_length=seq, return_tensors="np")
            enc = {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
            # Pad the first example further so the batch has padded positions to exclude.
            if enc["attention_mask"][0].sum() > 4:
                n = int(enc["attention_mask"][0].sum())
                enc["attention_mask"][0, n - 3:] = 0
                enc["input_ids"][0, n - 3:] = config.pad_token_id or 0
        except (ImportError, AttributeError, ValueError):
            enc = None
    if enc is None:
        enc = random_inputs(config, "BertModel", batch=batch, seq=seq, labels=False, seed=shift)
        enc = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    return enc


def checkpoint_cases(path: str, heads: list[str] | None = None, batch: int = 2, seq: int = 16, seed: int = 0
                     ) -> list[Case]:
    """One case per head: heads the checkpoint fills, or the named ``heads`` (``all`` = every class),
    whose missing head tensors are initialised from ``seed`` identically for every backend."""
    config, state, _ = load_checkpoint(path)
    if seq > config.max_position_embeddings:
        raise ValueError(f"--seq {seq} is more than the checkpoint's max_position_embeddings="
                         f"{config.max_position_embeddings}")
    if heads is None:
        heads = fillable_classes(state, config)
    elif heads == ["all"]:
        heads = list(HEADS)
    for h in heads:
        if h not in HEADS:
            raise ValueError(f"--heads: {h!r} is not one of {list(HEADS)} (or 'all')")
    cases = []
    base_config = config
    for h in heads:
        config = base_config.replace(num_labels=2) if h == "BertForQuestionAnswering" else base_config
        params, _ = match_state_dict(state, config, h, allow_new_head=True, seed=seed)
        params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        inputs = _encode(path, config, batch, seq, 3, h)
        labelled = random_inputs(config, h, batch=batch, seq=seq, seed=seed + 1)
        for k in ("labels", "next_sentence_label", "start_positions", "end_positions"):
            if k in labelled:
                lab = labelled[k]
                if h in ("BertForMaskedLM", "BertForTokenClassification", "BertLMHeadModel") and lab.ndim == 2:
                    lab = np.where(inputs["attention_mask"] == 1, lab, -100)
                inputs[k] = lab
        cases.append(Case(h, os.path.basename(os.path.normpath(path)) or "checkpoint", config, params, inputs))
    return cases
