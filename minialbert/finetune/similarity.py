"""Sentence-pair similarity with a bi-encoder ("siamese"): each sentence is encoded on its own, pooled, and the
pair's score is the cosine of the two embeddings (times the task's top score, 5 for STS-B), trained with the
squared error to the gold score — sentence-transformers' CosineSimilarityLoss. This is how a sentence-embedding
model (all-MiniLM-L6-v2 and the students distilled from it) is built to be used: its zero-shot cosine is already
a similarity, where a cross-encoder ([CLS] a [SEP] b [SEP] -> a regression head) must learn one from the labels.

``--pair-encoding auto`` picks it for a similarity task when the model folder is a sentence-transformers folder
(``modules.json``: the teacher, and the exports of its students), so teacher and student run the same command.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..modeling_minialbert import pool_hidden
from ..sentence_transformers_files import teacher_pooling


def is_sentence_transformers_folder(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "modules.json").is_file()


def pooling_of(model_dir: str | Path, config) -> str:
    """The folder's sentence-transformers pooling, else a MiniALBERT's ``classifier_pooling``, else mean."""
    found = teacher_pooling(Path(model_dir))
    if found in ("mean", "cls"):
        return found
    return getattr(config, "classifier_pooling", None) or "mean"


class PairSimilarity(nn.Module):
    """``encoder`` (an AutoModel) pooled by ``pooling``; logits (B, 1) = ``scale`` x cos(u, v)."""

    def __init__(self, encoder: nn.Module, pooling: str, scale: float):
        super().__init__()
        self.encoder, self.pooling, self.scale = encoder, pooling, scale

    @property
    def config(self):
        return self.encoder.config

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool_hidden(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask, self.pooling)

    def forward(self, input_ids, attention_mask, input_ids_b, attention_mask_b, labels=None, **_unused):
        cos = F.cosine_similarity(self._embed(input_ids, attention_mask).float(),
                                  self._embed(input_ids_b, attention_mask_b).float(), dim=-1)  # (B,)
        loss = None if labels is None else F.mse_loss(cos, labels.float() / self.scale)
        return SequenceClassifierOutput(loss=loss, logits=(cos * self.scale)[:, None])


def encode_pairs(first: list[str], second: list[str], labels: list, tokenizer, max_length: int) -> dict[str, list]:
    """Each sentence encoded alone (no token types: one segment each); the second as ``input_ids_b``, which
    ``training.batches`` pads into ``input_ids_b`` / ``attention_mask_b``."""
    a = tokenizer(first, truncation=True, max_length=max_length)["input_ids"]
    b = tokenizer(second, truncation=True, max_length=max_length)["input_ids"]
    return {"input_ids": a, "input_ids_b": b, "labels": list(labels)}
