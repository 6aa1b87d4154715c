"""Output containers with Hugging Face's field names, shared by every backend.

``ModelOutput`` is an ordered dict that also allows attribute access; fields that are ``None`` are left
out of the dict (as in HF), so ``out.to_tuple()`` and ``return_dict=False`` give HF's tuple layout.
"""
from __future__ import annotations

from typing import Any

# output class -> its fields, in HF's order (the order of return_dict=False tuples).
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "BaseModelOutputWithPoolingAndCrossAttentions": (
        "last_hidden_state", "pooler_output", "hidden_states", "past_key_values", "attentions", "cross_attentions"),
    "BertForPreTrainingOutput": (
        "loss", "prediction_logits", "seq_relationship_logits", "hidden_states", "attentions"),
    "CausalLMOutputWithCrossAttentions": (
        "loss", "logits", "past_key_values", "hidden_states", "attentions", "cross_attentions"),
    "MaskedLMOutput": ("loss", "logits", "hidden_states", "attentions"),
    "NextSentencePredictorOutput": ("loss", "logits", "hidden_states", "attentions"),
    "SequenceClassifierOutput": ("loss", "logits", "hidden_states", "attentions"),
    "MultipleChoiceModelOutput": ("loss", "logits", "hidden_states", "attentions"),
    "TokenClassifierOutput": ("loss", "logits", "hidden_states", "attentions"),
    "QuestionAnsweringModelOutput": ("loss", "start_logits", "end_logits", "hidden_states", "attentions"),
}
# model class -> output class.
OUTPUT_OF: dict[str, str] = {
    "BertModel": "BaseModelOutputWithPoolingAndCrossAttentions",
    "BertForPreTraining": "BertForPreTrainingOutput",
    "BertLMHeadModel": "CausalLMOutputWithCrossAttentions",
    "BertForMaskedLM": "MaskedLMOutput",
    "BertForNextSentencePrediction": "NextSentencePredictorOutput",
    "BertForSequenceClassification": "SequenceClassifierOutput",
    "BertForMultipleChoice": "MultipleChoiceModelOutput",
    "BertForTokenClassification": "TokenClassifierOutput",
    "BertForQuestionAnswering": "QuestionAnsweringModelOutput",
}


class ModelOutput(dict):
    """Dict of the non-None fields, in declared order, with attribute access.

    ``out.logits`` and ``out["logits"]`` are the same; a declared field that is None reads as None by
    attribute and is absent as a key. ``out[0]`` indexes the tuple of present fields, like HF.
    """

    fields: tuple[str, ...] = ()
    kind: str = "ModelOutput"

    def __init__(self, items: Any = (), /, **values: Any):
        # ``items`` (a mapping or (key, value) pairs, like ``dict``) lets tree libraries rebuild an output
        # from its fields: tf.nest / tf.function output packing and optree call ``type(out)(pairs)``.
        values = {**dict(items), **values}
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{self.kind} has no field(s) {sorted(unknown)}; fields are {list(self.fields)}")
        super().__init__((k, values[k]) for k in self.fields if values.get(k) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in self.fields:
            return self.get(name)
        raise AttributeError(f"{self.kind} has no field {name!r}")

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def to_numpy(self) -> "ModelOutput":
        """The same output with every tensor as a NumPy array, from any backend: the backend-neutral way
        to leave the framework (``model(**batch).to_numpy().logits``).

        torch tensors are detached and moved to the CPU (so tensors that require grad work); TF tensors
        and JAX arrays are copied to host memory. Nested tuples (``hidden_states``, ``past_key_values``)
        stay tuples of arrays. bfloat16 becomes float32 (NumPy has no bfloat16 of its own); every other
        dtype is kept. Returns a new output of the same class; the original is unchanged.
        """
        return type(self)(**{k: to_numpy(v) for k, v in self.items()})

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(self.keys())})"


def to_numpy(value: Any) -> Any:
    """One tensor (torch, TF, JAX, NumPy, Python number) or a nested tuple/list/dict of them -> NumPy.

    Framework-free: recognises tensors by their methods, imports no framework."""
    import numpy as np
    if value is None:
        return None
    if isinstance(value, ModelOutput):
        return value.to_numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf.Tensor / tf.Variable
        value = value.numpy()
    a = np.asarray(value)  # jax.Array and NumPy
    if a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return a


def _make(name: str) -> type[ModelOutput]:
    return type(name, (ModelOutput,), {"fields": OUTPUT_FIELDS[name], "kind": name, "__module__": __name__})


OUTPUT_CLASSES: dict[str, type[ModelOutput]] = {name: _make(name) for name in OUTPUT_FIELDS}
globals().update(OUTPUT_CLASSES)


def output_for(model_class: str, **values: Any) -> ModelOutput:
    """The output object ``model_class`` returns, built from field values (None fields dropped)."""
    return OUTPUT_CLASSES[OUTPUT_OF[model_class]](**values)
