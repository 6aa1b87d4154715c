"""The losses of the bert_tf heads (HF BERT's, written with TensorFlow ops): which one a call uses is
decided by ``bert_common.semantics``; these compute it. Losses are reduced in fp32."""
from __future__ import annotations

import tensorflow as tf

from bert_common import semantics
from bert_common.config import BertConfig

IGNORE_INDEX = semantics.IGNORE_INDEX


def _ce(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean CE over labels != ignore_index, in fp32. logits (..., L), labels (...) int -> scalar.
    All labels ignored gives 0/0 = NaN, as in Hugging Face."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    labels = tf.reshape(labels, [-1])
    keep = tf.not_equal(labels, ignore_index)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(nll * keep) / tf.reduce_sum(keep)


def causal_lm_loss(logits, labels):
    """Next-token loss: logits[:, :-1] (B, S-1, V) against labels[:, 1:]."""
    return _ce(logits[:, :-1], labels[:, 1:])


def sequence_classification_loss(logits, labels, config: BertConfig):
    """Loss chosen by ``semantics.problem_type``: MSE (regression), CE (single label), BCE-with-logits
    (multi-label, mean). logits (B, L)."""
    problem = semantics.problem_type(config, labels.dtype.is_integer)
    logits = tf.cast(logits, tf.float32)
    if problem == "regression":
        y = tf.cast(labels, tf.float32)
        if config.num_labels == 1:
            logits, y = tf.reshape(logits, [-1]), tf.reshape(y, [-1])
        return tf.reduce_mean(tf.square(logits - y))
    if problem == "single_label_classification":
        return _ce(logits, labels)
    y = tf.cast(labels, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """(CE(start) + CE(end)) / 2; positions (B,) clamped to [0, S] and S (outside the text) ignored."""
    S = tf.shape(start_logits)[1]
    losses = []
    for logits, pos in ((start_logits, start_positions), (end_logits, end_positions)):
        pos = tf.clip_by_value(tf.reshape(tf.cast(pos, tf.int32), [-1]), 0, S)
        losses.append(_ce(logits, tf.where(pos == S, IGNORE_INDEX, pos)))    # ignore_index = S
    return (losses[0] + losses[1]) / 2.0
