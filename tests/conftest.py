import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (reference_cases, ...) import as top-level modules

import minialbert  # noqa: E402  (registers the Auto classes)
from minialbert import MiniAlbertConfig  # noqa: E402


def tiny_config(**overrides) -> MiniAlbertConfig:
    """The house test shape: hidden 32, vocab ~100, 2 recursions."""
    kw = dict(
        vocab_size=100, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        num_recursions=2, use_adapters=True, adapter_reduction_factor=4, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    kw.update(overrides)
    return MiniAlbertConfig(**kw)


@pytest.fixture
def tiny():
    return tiny_config
