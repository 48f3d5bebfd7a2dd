"""Parameter accounting at the paper's shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minialbert import MiniAlbertConfig
from minialbert.params import count_for_config


@pytest.mark.parametrize("embedding_size, encoder_millions", [(128, 12.1), (312, 17.9)])
def test_paper_shape_encoder_sizes(embedding_size, encoder_millions):
    counts = count_for_config(MiniAlbertConfig(
        vocab_size=30522, embedding_size=embedding_size, hidden_size=768, num_attention_heads=12,
        intermediate_size=3072, num_recursions=6, use_adapters=True, adapter_reduction_factor=16,
    ))
    assert round(counts["encoder"] / 1e6, 1) == encoder_millions
    # One shared layer, whatever the number of recursions: attention 4·(H²+H) + 2H, FFN 2·H·F + F + H + 2H.
    assert counts["shared_layer"] == 4 * (768 * 768 + 768) + 2 * 768 + 2 * 768 * 3072 + 3072 + 768 + 2 * 768
    assert counts["adapters"] == 12 * (2 * 768 * 48 + 48 + 768 + 2 * 768)
    assert counts["recursion_deltas"] == 0


def test_recursion_deltas_count_per_recursion_and_in_the_encoder():
    config = dict(vocab_size=30522, embedding_size=128, hidden_size=384, num_attention_heads=12,
                  intermediate_size=1536, num_recursions=3, use_adapters=False)
    plain = count_for_config(MiniAlbertConfig(**config))
    relaxed = count_for_config(MiniAlbertConfig(**config, recursion_delta_rank=64))
    # Per recursion: rank 64 up·down for the four H x H and the two H x F matrices, every bias and LayerNorm.
    per_recursion = 64 * (4 * 2 * 384 + 2 * (384 + 1536)) + (4 * 384 + 1536 + 384) + 2 * 2 * 384
    assert relaxed["recursion_deltas"] == 3 * per_recursion
    assert relaxed["encoder"] - plain["encoder"] == 3 * per_recursion


def test_cli_prints_parts_of_a_saved_model(tiny, tmp_path):
    tiny().save_pretrained(tmp_path)
    done = subprocess.run([sys.executable, "-m", "minialbert.params", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert set(counts) >= {"embeddings", "projection", "shared_layer", "adapters", "mlm_head", "task_head"}
    assert counts["projection"] == 16 * 32 + 32


def test_cli_error_names_the_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "minialbert.params", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "nope" in done.stderr
