"""PyTorch BERT (``torch.nn.Module``s named like the canonical checkpoint). See docs/torch.md."""
from bert_common.config import BertConfig
from bert_torch.modeling import (
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

__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertLMHeadModel", "BertForMaskedLM",
           "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
           "BertForTokenClassification", "BertForQuestionAnswering", "BertPreTrainedModel", "MODEL_CLASSES"]
