"""The house test shape for students: hidden 32, vocab ~100, 2 recursions."""

from __future__ import annotations

from minialbert import MiniAlbertConfig


def tiny_config(**overrides) -> MiniAlbertConfig:
    kw = dict(
        vocab_size=100, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_recursions=2, use_adapters=True, adapter_reduction_factor=4, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    kw.update(overrides)
    return MiniAlbertConfig(**kw)
