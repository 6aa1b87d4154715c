"""bert_tf: BERT for TensorFlow 2 with Keras 3 (TensorFlow backend).

Exports the ten public names of every bertrio backend plus Hugging Face's ``TFBert…`` aliases.
``TFBertTokenizer`` (the in-graph tokenizer) loads lazily from ``bert_tf.tokenizer``.
"""
from __future__ import annotations

from bert_common.config import BertConfig
from bert_tf.modeling import (BertForMaskedLM, BertForMultipleChoice, BertForNextSentencePrediction,
                              BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                              BertForTokenClassification, BertLMHeadModel, BertModel, BertPreTrainedModel,
                              export_saved_model, serving_fn)

# Hugging Face's TF names -> ours (drop-in for people migrating from transformers' TF classes).
TFBertModel = BertModel
TFBertForPreTraining = BertForPreTraining
TFBertLMHeadModel = BertLMHeadModel
TFBertForMaskedLM = BertForMaskedLM
TFBertForNextSentencePrediction = BertForNextSentencePrediction
TFBertForSequenceClassification = BertForSequenceClassification
TFBertForMultipleChoice = BertForMultipleChoice
TFBertForTokenClassification = BertForTokenClassification
TFBertForQuestionAnswering = BertForQuestionAnswering
TFBertPreTrainedModel = BertPreTrainedModel

__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertLMHeadModel", "BertForMaskedLM",
           "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
           "BertForTokenClassification", "BertForQuestionAnswering", "BertPreTrainedModel",
           "TFBertModel", "TFBertForPreTraining", "TFBertLMHeadModel", "TFBertForMaskedLM",
           "TFBertForNextSentencePrediction", "TFBertForSequenceClassification", "TFBertForMultipleChoice",
           "TFBertForTokenClassification", "TFBertForQuestionAnswering", "TFBertPreTrainedModel",
           "TFBertTokenizer", "export_saved_model", "serving_fn"]


def __getattr__(name: str):
    # The tokenizer is written separately and is built from the shared tokenizer spec (core TF ops); load it only on use.
    if name == "TFBertTokenizer":
        from bert_tf.tokenizer import TFBertTokenizer
        return TFBertTokenizer
    raise AttributeError(f"module 'bert_tf' has no attribute {name!r}")
