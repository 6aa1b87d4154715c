"""Head and call semantics shared by every backend: each rule that is not a tensor operation, written once.

The three ``modeling.py`` files compute; this module decides. It holds the class table and the public
names, which keyword arguments each class takes, how labels pick a loss, how a head mask is shaped, when a
cache is built, how multiple-choice inputs are flattened, which attention path and mask dtype a call
uses, how the feed-forward is chunked, and the defaults of ``generate``. Everything here is plain Python
or NumPy, so a backend applies the rule and the error text is the same in all three.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from bert_common.config import BertConfig
from bert_common.outputs import OUTPUT_FIELDS, OUTPUT_OF
from bert_common.weights import HEADS, MODEL_CLASSES

IGNORE_INDEX = -100  # label value that contributes no loss (Hugging Face semantics)

# ------------------------------------------------------------------------------------------ public names
# The ten public names every backend exports, in this order (the config plus the HEADS classes).
PUBLIC_NAMES: tuple[str, ...] = ("BertConfig",) + MODEL_CLASSES
# Drop-in names for people migrating from Hugging Face's TF and Flax classes: backend -> {alias: ours}.
_HF_NAMES = {name: name for name in MODEL_CLASSES}
ALIASES: dict[str, dict[str, str]] = {
    "torch": {},
    "tf": {"TF" + ours: ours for ours in _HF_NAMES} | {"TFBertPreTrainedModel": "BertPreTrainedModel"},
    "flax": {("FlaxBertForCausalLM" if ours == "BertLMHeadModel" else "Flax" + ours): ours for ours in _HF_NAMES}
            | {"FlaxBertPreTrainedModel": "BertPreTrainedModel"},
}


def exports(backend: str, module_globals: Mapping[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{name: object}`` a backend package exports: the public names, ``BertPreTrainedModel``, its HF
    aliases and ``extra`` names, all looked up in ``module_globals`` (the backend's ``modeling``)."""
    names = PUBLIC_NAMES[1:] + ("BertPreTrainedModel",) + extra
    out = {name: module_globals[name] for name in names}
    out.update({alias: module_globals[ours] for alias, ours in ALIASES[backend].items()})
    return out


def class_table(classes) -> dict[str, type]:
    """``{model_class: cls}`` in HEADS order from a backend's classes; fails loudly on a missing one."""
    by_name = {cls.model_class: cls for cls in classes}
    missing = [name for name in MODEL_CLASSES if name not in by_name]
    if missing:
        raise ImportError(f"backend lacks classes {missing}")
    return {name: by_name[name] for name in MODEL_CLASSES}


# ------------------------------------------------------------------------------------------ call arguments
# Which inputs each class takes beyond the common ones, as in Hugging Face's torch BERT: encoder states on
# the classes that can decode or cross-attend, the cache only where the output has a field for it.
COMMON_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
               "output_attentions", "output_hidden_states", "return_dict")
ENCODER_ARGS = ("encoder_hidden_states", "encoder_attention_mask")
CACHE_ARGS = ("past_key_values", "use_cache")
LABEL_ARGS: dict[str, tuple[str, ...]] = {
    "BertModel": (),
    "BertForPreTraining": ("labels", "next_sentence_label"),
    "BertLMHeadModel": ("labels",),
    "BertForMaskedLM": ("labels",),
    "BertForNextSentencePrediction": ("labels",),
    "BertForSequenceClassification": ("labels",),
    "BertForMultipleChoice": ("labels",),
    "BertForTokenClassification": ("labels",),
    "BertForQuestionAnswering": ("start_positions", "end_positions"),
}
# Deprecated spellings HF still accepts (with a FutureWarning): class -> {old: new}.
LABEL_RENAMES: dict[str, dict[str, str]] = {"BertForNextSentencePrediction": {"next_sentence_label": "labels"}}
_TAKES_ENCODER = ("BertModel", "BertLMHeadModel", "BertForMaskedLM")
_TAKES_CACHE = ("BertModel", "BertLMHeadModel")


def call_args(model_class: str) -> tuple[str, ...]:
    """Every keyword argument ``model_class``'s forward takes, in HF's order."""
    return (COMMON_ARGS + (ENCODER_ARGS if model_class in _TAKES_ENCODER else ())
            + (CACHE_ARGS if model_class in _TAKES_CACHE else ()) + LABEL_ARGS[model_class])


def unexpected_argument(model_class: str, names) -> TypeError:
    """The TypeError every backend raises for keyword arguments ``model_class`` does not take."""
    return TypeError(f"{model_class}.forward() got unexpected keyword argument(s) {sorted(names)}; "
                     f"it takes {list(call_args(model_class))}")


def check_call_args(model_class: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Reject keywords ``model_class`` does not take (a TypeError naming them); apply deprecated label
    renames (``next_sentence_label`` -> ``labels`` on the NSP head, with HF's FutureWarning). Returns the
    keywords with renames applied; values that are None count as not given."""
    given = dict(given)
    for old, new in LABEL_RENAMES.get(model_class, {}).items():
        if given.get(old) is not None:
            import warnings
            warnings.warn(f"The `{old}` argument is deprecated; use `{new}` instead.", FutureWarning, stacklevel=4)
            if given.get(new) is not None:
                raise ValueError(f"{model_class} got both {new} and its deprecated name {old}; pass {new}")
            given[new] = given.pop(old)
        given.pop(old, None)
    allowed = set(call_args(model_class))
    bad = [k for k, v in given.items() if k not in allowed and v is not None]
    if bad:
        raise unexpected_argument(model_class, bad)
    return given


def has_loss(model_class: str, labels: Mapping[str, Any]) -> bool:
    """A loss is computed only when every label keyword of the class is given (HF)."""
    names = LABEL_ARGS[model_class]
    return bool(names) and all(labels.get(k) is not None for k in names)


# ------------------------------------------------------------------------------------------ configs
def check_head_config(model_class: str, config: BertConfig) -> None:
    """Configs a head cannot honour, refused at construction with the same message everywhere."""
    if model_class == "BertForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"BertForQuestionAnswering needs config.num_labels=2 (start, end), got "
                         f"num_labels={config.num_labels}")


def add_pooling_layer(model_class: str, given: bool | None) -> bool:
    """Whether ``model_class`` builds the pooler: the argument when given, else HF's default (HEADS)."""
    return HEADS[model_class].pooler if given is None else bool(given)


def head_outputs(model_class: str) -> int:
    """Width of the classifier a head owns (multiple choice scores each choice with one logit)."""
    return 1 if model_class == "BertForMultipleChoice" else 0


# ------------------------------------------------------------------------------------------ flags
def resolve_flags(config: BertConfig, output_attentions=None, output_hidden_states=None, return_dict=None
                  ) -> tuple[bool, bool, bool]:
    """None means the config's value (HF)."""
    return (bool(config.output_attentions if output_attentions is None else output_attentions),
            bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states),
            bool(config.return_dict if return_dict is None else return_dict))


def use_cache(config: BertConfig, model_class: str, use_cache: bool | None, has_labels: bool = False,
              checkpointing_in_training: bool = False) -> bool:
    """Whether a call builds ``past_key_values``.

    HF torch BERT: the default is ``config.use_cache``; only a decoder caches (an encoder's bidirectional
    attention cannot be extended, so ``use_cache=True`` on an encoder is ignored, not an error); training
    the LM head (labels given) and gradient checkpointing in training never cache; a class whose output
    has no ``past_key_values`` field never builds one.
    """
    wanted = config.use_cache if use_cache is None else use_cache
    return bool(wanted and config.is_decoder and not has_labels and not checkpointing_in_training
                and "past_key_values" in OUTPUT_FIELDS[OUTPUT_OF[model_class]])


# ------------------------------------------------------------------------------------------ attention
DEFAULT_ATTN_IMPLEMENTATION = {"torch": "sdpa", "tf": "eager", "flax": "eager"}
_FALLBACK_MESSAGE = ("attn_implementation='sdpa' cannot return or scale attention probabilities; calls with "
                     "output_attentions=True or head_mask use the eager attention path")


def attention_path(config: BertConfig, backend: str, output_attentions: bool, has_head_mask: bool
                   ) -> tuple[bool, str | None]:
    """(eager?, note to log once or None). ``config.attn_implementation``: "eager" = explicit scores and
    probabilities; "sdpa" = the framework's fused attention (torch SDPA, ``keras.ops.dot_product_attention``,
    ``jax.nn.dot_product_attention``); None = the backend's default. A call that needs probabilities runs
    eager even under "sdpa" (they are never materialised by the fused kernel)."""
    impl = config.attn_implementation or DEFAULT_ATTN_IMPLEMENTATION[backend]
    if impl == "eager":
        return True, None
    if output_attentions or has_head_mask:
        # varlen computes probabilities itself when asked (explicit scores per block / segment mask)
        return True, None if impl == "varlen" else _FALLBACK_MESSAGE
    return False, None


# ------------------------------------------------------------------------------------------ varlen
# How ``attn_implementation="varlen"`` runs (see ``bert_common.varlen``): "unpad" packs the kept tokens on
# the host and runs every dense layer on them; "segments" keeps the padded layout with an in-graph segment
# mask (inputs the host cannot see, or attention probabilities requested in the padded (B, N, S, S) layout).
VARLEN_MODES = ("unpad", "segments")
# Inputs varlen does not combine with: it confines self-attention to sequences of one row; a cache or
# encoder states belong to whole rows.
_VARLEN_EXCLUDES = ("encoder_hidden_states", "past_key_values")


def varlen_mode(config: BertConfig, concrete: bool, output_attentions: bool, given: Mapping[str, Any] = {}
                ) -> str | None:
    """None unless ``config.attn_implementation == "varlen"``; then "unpad" or "segments" (see above).
    ``given``: the call's inputs by name (None = not given); a cache or encoder states are a ValueError."""
    if config.attn_implementation != "varlen":
        return None
    for name in _VARLEN_EXCLUDES:
        if given.get(name) is not None:
            raise ValueError(f"{name} cannot be used with attn_implementation='varlen' (attention is confined "
                             f"to the sequences of each row); use 'eager' or 'sdpa' for this call")
    return "unpad" if concrete and not output_attentions else "segments"


def packed_rows(config: BertConfig, position_ids: Any) -> bool:
    """True when rows may hold several sequences: varlen with explicit ``position_ids``. The row may then
    be longer than ``max_position_embeddings`` (positions restart per sequence and are range-checked)."""
    return config.attn_implementation == "varlen" and position_ids is not None


def mask_dtype(eager: bool, compute_dtype: str) -> str:
    """The dtype of the additive mask: eager adds it to fp32 scores (softmax runs in fp32 for every
    dtype; float64 stays float64, so a float64 reference is float64 throughout), the fused kernels take it
    in the activation dtype."""
    return compute_dtype if (not eager or compute_dtype == "float64") else "float32"


def relative_distance_index(arange: Callable[[Any], Any], query_length, key_length, past_length,
                            max_positions: int):
    """(S, K) index into ``distance_embedding``: query pos − key pos + max_positions − 1, where query
    positions are ``past_length + arange(S)`` and key positions ``arange(K)``. ``arange`` is the
    framework's (torch.arange / tf.range / jnp.arange), so this runs on device and under tracing."""
    query = past_length + arange(query_length)
    key = arange(key_length)
    return query[:, None] - key[None, :] + (max_positions - 1)


# ------------------------------------------------------------------------------------------ head mask
def head_mask_kind(config: BertConfig, shape) -> str:
    """``"shared"`` for (N,) (the same mask in every layer) or ``"per_layer"`` for (L, N); anything else
    is a ValueError naming both accepted shapes."""
    L, N = config.num_hidden_layers, config.num_attention_heads
    shape = tuple(int(d) for d in shape)
    if shape == (N,):
        return "shared"
    if shape == (L, N):
        return "per_layer"
    raise ValueError(f"head_mask has shape {shape} but must be (num_attention_heads,) = ({N},) or "
                     f"(num_hidden_layers, num_attention_heads) = ({L}, {N})")


# ------------------------------------------------------------------------------------------ feed-forward
def feed_forward_chunks(config: BertConfig, seq_length: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` slices of the sequence axis the feed-forward of a (B, S, H) block runs on,
    one at a time (HF's ``apply_chunking_to_forward``): one slice when ``chunk_size_feed_forward`` is 0
    (or S is not known while tracing), else slices of that size, the last one shorter when the size does
    not divide S (HF raises there, which would forbid one-token decoding steps). Each position's
    feed-forward is independent, so chunking changes peak memory, not results."""
    size = config.chunk_size_feed_forward or 0
    if seq_length is None or size <= 0 or seq_length <= size:
        return [(0, seq_length)]
    return [(i, min(i + size, seq_length)) for i in range(0, seq_length, size)]


# ------------------------------------------------------------------------------------------ losses
def problem_type(config: BertConfig, labels_are_integers: bool) -> str:
    """Sequence-classification loss selection (HF, without mutating the config): ``config.problem_type``
    when set, else num_labels == 1 -> regression, integer labels -> single-label, else multi-label."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels_are_integers else "multi_label_classification"


# ------------------------------------------------------------------------------------------ multiple choice
# Multiple choice runs the encoder on every choice: inputs (B, C, ...) are flattened to (B*C, ...).
# argument -> rank it has before flattening (ids and masks (B, C, S); embeddings (B, C, S, H)).
CHOICE_RANKS = {"input_ids": 3, "attention_mask": 3, "token_type_ids": 3, "position_ids": 3, "inputs_embeds": 4}


def choice_plan(shapes: Mapping[str, Any]) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(C, {argument: flattened shape}) for the given multiple-choice inputs' shapes (None = absent).

    Raises ValueError naming the first argument whose rank is not that of ``CHOICE_RANKS``. Dimensions
    may be None (unknown while tracing); a flattened batch that is not known is -1."""
    plan, choices = {}, None
    for arg, rank in CHOICE_RANKS.items():
        shape = shapes.get(arg)
        if shape is None:
            continue
        shape = tuple(_dim(d) for d in shape)
        if len(shape) != rank:
            want = "(batch, num_choices, seq)" if rank == 3 else "(batch, num_choices, seq, hidden)"
            raise ValueError(f"{arg} has shape {shape} but BertForMultipleChoice needs {want}")
        choices = shape[1] if not plan else choices
        plan[arg] = (-1 if None in shape[:2] else shape[0] * shape[1],) + shape[2:]
    if not plan:
        raise ValueError("one of input_ids or inputs_embeds is required")
    return choices, plan


def _dim(d: Any) -> Any:
    """A size as int; None (unknown while tracing) and symbolic sizes (``jax.export`` shape polymorphism,
    which refuse ``int``) stay as they are, so the flattened size stays symbolic too."""
    if d is None:
        return None
    try:
        return int(d)
    except Exception:  # noqa: BLE001 -- jax raises its own InconclusiveDimensionOperation (an Exception)
        return d


# ------------------------------------------------------------------------------------------ generate
def generation_defaults(config: BertConfig, eos_token_id: int | None, pad_token_id: int | None
                        ) -> tuple[int | None, int]:
    """(eos, pad) for ``generate``: the arguments, else ``config.eos_token_id`` / ``config.pad_token_id``
    (pad falls back to 0)."""
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    pad = pad_token_id if pad_token_id is not None else (config.pad_token_id or 0)
    return eos, pad


def check_generate(config: BertConfig) -> None:
    if not config.is_decoder:
        raise ValueError("generate needs config.is_decoder=True (causal attention); got is_decoder=False")
