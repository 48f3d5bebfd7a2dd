"""minialbert: distil a BERT teacher into a recursive MiniALBERT student.

Importing the package registers the student with the transformers Auto classes, so that
``AutoModelForMaskedLM.from_pretrained(dir)`` (and the sequence/token classification Auto classes) load it.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_minialbert import MiniAlbertConfig
from .modeling_minialbert import (
    MiniAlbertForMaskedLM,
    MiniAlbertForSequenceClassification,
    MiniAlbertForTokenClassification,
    MiniAlbertModel,
    MiniAlbertPreTrainedModel,
)

AutoConfig.register(MiniAlbertConfig.model_type, MiniAlbertConfig, exist_ok=True)
AutoModel.register(MiniAlbertConfig, MiniAlbertModel, exist_ok=True)
AutoModelForMaskedLM.register(MiniAlbertConfig, MiniAlbertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(MiniAlbertConfig, MiniAlbertForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(MiniAlbertConfig, MiniAlbertForTokenClassification, exist_ok=True)

__all__ = [
    "MiniAlbertConfig",
    "MiniAlbertModel",
    "MiniAlbertPreTrainedModel",
    "MiniAlbertForMaskedLM",
    "MiniAlbertForSequenceClassification",
    "MiniAlbertForTokenClassification",
]
