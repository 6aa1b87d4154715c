"""bertrio's Flax (Linen) backend: the 10 public names of DESIGN §2 plus Hugging Face's Flax aliases.

``from bert_flax import BertModel``; ``FlaxBertModel`` is the same class (``FlaxBertForCausalLM`` is
``BertLMHeadModel``). Imports jax / flax only.
"""
from bert_common.config import BertConfig
from bert_flax.modeling import (
    CHECK_MODES,
    MODEL_CLASSES,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    BertModel,
    BertPreTrainedModel,
)

# Drop-in names for people migrating from transformers' Flax classes.
FlaxBertModel = BertModel
FlaxBertForPreTraining = BertForPreTraining
FlaxBertForCausalLM = BertLMHeadModel
FlaxBertForMaskedLM = BertForMaskedLM
FlaxBertForNextSentencePrediction = BertForNextSentencePrediction
FlaxBertForSequenceClassification = BertForSequenceClassification
FlaxBertForMultipleChoice = BertForMultipleChoice
FlaxBertForTokenClassification = BertForTokenClassification
FlaxBertForQuestionAnswering = BertForQuestionAnswering

__all__ = [
    "BertConfig", "BertModel", "BertForPreTraining", "BertLMHeadModel", "BertForMaskedLM",
    "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
    "BertForTokenClassification", "BertForQuestionAnswering",
    "FlaxBertModel", "FlaxBertForPreTraining", "FlaxBertForCausalLM", "FlaxBertForMaskedLM",
    "FlaxBertForNextSentencePrediction", "FlaxBertForSequenceClassification", "FlaxBertForMultipleChoice",
    "FlaxBertForTokenClassification", "FlaxBertForQuestionAnswering",
    "BertPreTrainedModel", "MODEL_CLASSES", "CHECK_MODES",
]
