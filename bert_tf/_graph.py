"""TensorFlow plumbing kept out of ``modeling.py``: input validation for every execution mode.

- eager: ``bert_common.validation`` on the concrete values (a plain ``ValueError``);
- ``tf.function`` (graph): ``tf.debugging.Assert`` ops carrying the same message (``InvalidArgumentError``),
  which every kernel of the forward waits for;
- XLA (``jit_compile=True``): XLA has no runtime errors or strings, so nothing can raise inside. The
  model's ``checked_xla()`` entry point validates concrete inputs on the host before entering the compiled
  function; under a user's own ``tf.function(jit_compile=True)`` a bad id or mask value instead turns every
  output into NaN (``poison``), never plausible numbers.
"""
from __future__ import annotations

import tensorflow as tf

from bert_common import semantics
from bert_common.config import BertConfig
from bert_common.validation import (check_inputs, check_rank, empty_message, input_limits, label_range_message, label_rules, length_message,
                                    mask_value_message, range_message, shape_message)


def _is_xla_tracing() -> bool:
    """True while tracing under ``tf.function(jit_compile=True)``: XLA has no runtime errors or strings."""
    try:
        from tensorflow.python.ops import control_flow_util
        return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except Exception:  # private API moved: assume not XLA, the asserts then fail loudly at compile time
        return False


def _fill(template: str, *parts) -> tf.Tensor:
    """In-graph string: ``template`` with the placeholders ``\\x00``, ``\\x01``, ... replaced by tensors."""
    pieces, rest = [], template
    for i, part in enumerate(parts):
        head, _, rest = rest.partition(chr(i))
        pieces += [head, part if part.dtype == tf.string else tf.strings.as_string(part)]
    return tf.strings.join(pieces + [rest])


def _shape_text(shape) -> tf.Tensor:
    """(r,) int tensor -> string ``"(a, b)"`` as Python prints a tuple of length >= 2."""
    return tf.strings.join(["(", tf.strings.reduce_join(tf.strings.as_string(shape), separator=", "), ")"])


def _shape_template(arg: str) -> str:
    return shape_message(arg, (chr(0),), (chr(1),)).replace(str((chr(0),)), chr(0)).replace(str((chr(1),)), chr(1))


def _graph_checks(config: BertConfig, ids: dict, base_shape, base_static: list, attention_mask, past_length, seq_arg,
                  packed: bool = False):
    """tf.debugging asserts with the messages of ``bert_common.validation`` (same wording), for traced inputs.
    ``packed`` (varlen rows with position ids) lifts the row-length limit, as in ``check_inputs``."""
    checks = []
    for arg, (limit, source) in input_limits(config).items():
        x = ids.get(arg)
        if x is None:
            continue
        flat = tf.reshape(x, [-1])
        bad = (flat < 0) | (flat >= limit)
        # First offending value in C order, as check_inputs reports it (a trailing 0 keeps empty input legal).
        value = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)[tf.argmax(tf.cast(bad, tf.int32))]
        msg = _fill(range_message(arg, chr(0), limit, source), value)
        checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [msg]))
        if arg != "position_ids":
            if x.shape.rank is not None and x.shape.rank != len(base_static):
                raise ValueError(shape_message(arg, x.shape.as_list(), base_static))
            same = tf.reduce_all(tf.equal(tf.shape(x, out_type=tf.int32), base_shape))
            checks.append(tf.debugging.Assert(same, [_fill(_shape_template(arg), _shape_text(tf.shape(x)),
                                                             _shape_text(base_shape))]))
    seq = base_shape[-1]
    limit = config.max_position_embeddings
    if not packed:
        checks.append(tf.debugging.Assert(seq + past_length <= limit,
                                          [_fill(length_message(seq_arg, chr(0), chr(1), limit), seq, past_length)]))
    if attention_mask is not None:
        expected = tf.concat([base_shape[:-1], [past_length + seq]], 0)
        static = tf.get_static_value(expected)
        if static is not None and attention_mask.shape.is_fully_defined() and tuple(attention_mask.shape) != tuple(
                static.tolist()):  # known while tracing: fail now, like the eager check
            raise ValueError(shape_message("attention_mask", attention_mask.shape.as_list(), static.tolist()))
        if attention_mask.shape.rank is not None and attention_mask.shape.rank != len(base_static):
            ok = tf.constant(False)  # wrong rank: tf.equal of the shapes could not even broadcast
        else:
            ok = tf.reduce_all(tf.equal(tf.shape(attention_mask, out_type=tf.int32), expected))
        checks.append(tf.debugging.Assert(ok, [_fill(_shape_template("attention_mask"),
                                                     _shape_text(tf.shape(attention_mask)), _shape_text(expected))]))
        checks.append(_mask_value_check("attention_mask", attention_mask))
    return checks


def _encoder_mask_check(encoder_hidden_states, encoder_attention_mask):
    """In-graph twin of check_inputs' encoder mask rule: mask (B, E) must match states (B, E, H)."""
    expected = tf.shape(encoder_hidden_states, out_type=tf.int32)[:-1]
    got, want = encoder_attention_mask.shape, encoder_hidden_states.shape[:-1]
    if got.is_fully_defined() and want.is_fully_defined() and got != want:
        # Known while tracing: fail now (the broadcast below would fail at trace time with a worse message).
        raise ValueError(f"encoder_attention_mask has shape {tuple(got)} but encoder_hidden_states needs "
                         f"{tuple(want)} (batch, encoder seq)")
    if encoder_attention_mask.shape.rank not in (None, 2):
        ok = tf.constant(False)
    else:
        ok = tf.reduce_all(tf.equal(tf.shape(encoder_attention_mask, out_type=tf.int32), expected))
    msg = _fill("encoder_attention_mask has shape \x00 but encoder_hidden_states needs \x01 (batch, encoder seq)",
                _shape_text(tf.shape(encoder_attention_mask)), _shape_text(expected))
    return tf.debugging.Assert(ok, [msg])


def validate_inputs(config: BertConfig, *, input_ids=None, token_type_ids=None, position_ids=None,
                    attention_mask=None, inputs_embeds=None, past_length=0, encoder_hidden_states=None,
                    encoder_attention_mask=None, packed: bool = False):
    """Check DESIGN §6 before any kernel runs. Returns the list of in-graph assert ops (empty when eager).
    ``packed``: ``bert_common.semantics.packed_rows`` (no row-length limit).

    Eager: ``bert_common.validation.check_inputs`` on the concrete values (raises ``ValueError``).
    Traced: ``tf.debugging.Assert`` ops carrying the same message (raise ``InvalidArgumentError``); the
    caller makes the computation depend on them. Under XLA (``jit_compile=True``) there is no runtime
    error mechanism: nothing is added here, ``poison`` makes the outputs NaN instead.
    """
    for arg, x in (("input_ids", input_ids), ("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if x is not None and not x.dtype.is_integer:
            raise ValueError(f"{arg} must hold integers, got dtype {x.dtype.name}")
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("one of input_ids or inputs_embeds is required")
    if tf.executing_eagerly():  # concrete values: the shared NumPy check, a plain ValueError
        check_inputs(config, input_ids=None if input_ids is None else input_ids.numpy(),
                     token_type_ids=None if token_type_ids is None else token_type_ids.numpy(),
                     position_ids=None if position_ids is None else position_ids.numpy(),
                     attention_mask=None if attention_mask is None else attention_mask.numpy(),
                     inputs_embeds_shape=None if inputs_embeds is None else tuple(inputs_embeds.shape),
                     past_length=int(past_length),
                     encoder_hidden_shape=None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape),
                     encoder_attention_mask=None if encoder_attention_mask is None else encoder_attention_mask.numpy(),
                     packed=packed)
        return []
    base = input_ids if input_ids is not None else inputs_embeds[..., 0]
    _static_checks(config, base, input_ids is not None)
    if _is_xla_tracing():
        return []
    base_shape = tf.shape(base, out_type=tf.int32)
    ids = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    seq_arg = "input_ids" if input_ids is not None else "inputs_embeds"
    checks = _graph_checks(config, ids, base_shape, base.shape.as_list(), attention_mask,
                           tf.cast(past_length, tf.int32), seq_arg, packed)
    if encoder_hidden_states is not None and encoder_attention_mask is not None:
        checks.append(_encoder_mask_check(encoder_hidden_states, encoder_attention_mask))
    if encoder_attention_mask is not None:
        checks.append(_mask_value_check("encoder_attention_mask", encoder_attention_mask))
    return checks



def checked_inputs(config: BertConfig, a: dict, input_ids, inputs_embeds, past_length):
    """``validate_inputs`` for one forward of ``BertModel``: ``a`` the prepared call arguments, ``input_ids``
    and ``inputs_embeds`` (already in the compute dtype) as the model uses them. Returns ``(a, input_ids,
    inputs_embeds)``; under tracing every one of them that a kernel gathers or broadcasts becomes an
    identity depending on the asserts (the same objects when there are none)."""
    checks = validate_inputs(config, input_ids=input_ids, token_type_ids=a["token_type_ids"],
                             position_ids=a["position_ids"], attention_mask=a["attention_mask"],
                             inputs_embeds=inputs_embeds, past_length=past_length,
                             encoder_hidden_states=a["encoder_hidden_states"],
                             encoder_attention_mask=a["encoder_attention_mask"],
                             packed=semantics.packed_rows(config, a["position_ids"]))
    if not checks:
        return a, input_ids, inputs_embeds
    # Every kernel depends on the checks (CPU gathers would raise first, GPU ones return 0), and every
    # gathered or broadcast input, not only the ids: a position or token-type gather that does not wait
    # for the asserts may fail first with TF's own message.
    with tf.control_dependencies(checks):
        input_ids = None if input_ids is None else tf.identity(input_ids)
        inputs_embeds = None if inputs_embeds is None else tf.identity(inputs_embeds)
        a = {**a, **{k: tf.identity(a[k]) for k in ("token_type_ids", "position_ids", "attention_mask",
                                                     "encoder_hidden_states", "encoder_attention_mask")
                     if a.get(k) is not None}}
    return a, input_ids, inputs_embeds

def _static_checks(config: BertConfig, base, is_ids: bool) -> None:
    """Rank and zero length, known while tracing: raised at once as the eager ValueError."""
    rank = base.shape.rank
    if rank is not None:
        check_rank(is_ids, base.shape.as_list() + ([] if is_ids else [config.hidden_size]))
    if rank is not None and base.shape[-1] == 0:
        raise ValueError(empty_message("input_ids" if is_ids else "inputs_embeds", base.shape.as_list()))


def _mask_value_check(arg: str, mask):
    """In-graph twin of ``check_mask_values``: only 0 and 1 (NaN fails both comparisons)."""
    flat = tf.reshape(mask, [-1])
    bad = tf.logical_not((flat == tf.zeros([], flat.dtype)) | (flat == tf.ones([], flat.dtype)))
    value = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)[tf.argmax(tf.cast(bad, tf.int32))]
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                               [_fill(mask_value_message(arg, chr(0)), value)])


def label_checks(config: BertConfig, model_class: str, labels: dict, num_choices=None) -> list:
    """In-graph range checks of integer labels (``bert_common.validation.label_rules``), same messages.
    Shapes and dtypes are static while tracing and are checked by ``check_labels``-equivalent code in
    the model before this runs. Empty list when eager or under XLA."""
    if tf.executing_eagerly() or _is_xla_tracing():
        return []
    checks = []
    for arg, (integer, _, limit, source, ignore) in label_rules(config, model_class, num_choices).items():
        x = labels.get(arg)
        if x is None or limit is None or not x.dtype.is_integer:
            continue
        flat = tf.reshape(x, [-1])
        bad = (flat < 0) | (flat >= limit)
        if ignore:
            bad &= flat != -100
        value = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)[tf.argmax(tf.cast(bad, tf.int32))]
        msg = _fill(label_range_message(arg, chr(0), limit, source, ignore), value)
        checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [msg]))
    return checks


def poison(config: BertConfig, x, input_ids=None, token_type_ids=None, position_ids=None, attention_mask=None):
    """Under XLA only: ``x`` + NaN when any id is out of range or a mask value is not 0/1, else ``x``
    unchanged (adding 0.0 is exact). XLA clamps out-of-range gathers, which would give plausible numbers."""
    if not _is_xla_tracing():
        return x
    bad = tf.constant(False)
    ids = {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": position_ids}
    for arg, (limit, _) in input_limits(config).items():
        if ids.get(arg) is not None:
            bad |= tf.reduce_any((ids[arg] < 0) | (ids[arg] >= limit))
    if attention_mask is not None:
        m = attention_mask
        bad |= tf.reduce_any(tf.logical_not((m == tf.zeros([], m.dtype)) | (m == tf.ones([], m.dtype))))
    return x + tf.where(bad, tf.constant(float("nan"), x.dtype), tf.constant(0.0, x.dtype))
