"""Optimizer parameter groups: weight decay on matrices only, never on biases or LayerNorm weights.

The original MiniALBERT trained with the Hugging Face Trainer, which excludes biases and LayerNorm weights from
weight decay; distillation (through DeepSpeed, any ZeRO stage) and fine-tuning use the same two groups.
"""

from __future__ import annotations

from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters: matrices (embeddings, projections) decayed; vectors (biases,
    LayerNorm weights and biases) not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
