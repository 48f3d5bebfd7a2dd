"""What each recursion of the student owns beside the shared layer: two bottleneck adapters (between the shared
layer's blocks) and, with ``recursion_delta_rank`` R > 0, a delta to every weight of the shared layer (rank R for
the weight matrices, full for biases and LayerNorms). Ships with every export, next to ``modeling_minialbert.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_minialbert import MiniAlbertConfig


class BottleneckAdapter(nn.Module):
    """LN(x + up(gelu(down(x)))): H -> H/r -> H."""

    def __init__(self, hidden_size: int, reduction_factor: int, eps: float):
        super().__init__()
        self.down = nn.Linear(hidden_size, hidden_size // reduction_factor)
        self.up = nn.Linear(hidden_size // reduction_factor, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.up(F.gelu(self.down(x))) + x)


class RecursionAdapters(nn.Module):
    """The two adapters one recursion owns: before the attention block and before the feed-forward block."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        args = (config.hidden_size, config.adapter_reduction_factor, config.layer_norm_eps)
        self.attention = BottleneckAdapter(*args)
        self.ffn = BottleneckAdapter(*args)


def _plus(shared: torch.Tensor | None, own: torch.Tensor | None) -> torch.Tensor | None:
    return None if shared is None else shared + own


class LowRankDelta(nn.Module):
    """One recursion's change to one linear map of the shared layer: weight + up·down (rank R), bias + bias (a
    shared map without bias: none)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def applied_to(self, shared: nn.Linear):
        """The recursion's linear map, as a function of (…, in) -> (…, out). The weight is formed once per call
        (2·R·in·out FLOPs, no per-token cost)."""
        weight, bias = shared.weight + self.up @ self.down, _plus(shared.bias, self.bias)
        return lambda x: F.linear(x, weight, bias)


class NormDelta(nn.Module):
    """One recursion's change to one LayerNorm of the shared layer: gain + weight, bias + bias."""

    def __init__(self, width: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def applied_to(self, shared: nn.LayerNorm):
        weight, bias = shared.weight + self.weight, _plus(shared.bias, self.bias)
        return lambda x: F.layer_norm(x, shared.normalized_shape, weight, bias, shared.eps)


class RecursionDelta(nn.Module):
    """What one recursion adds to every weight of the shared layer (``recursion_delta_rank`` R > 0)."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        h, i, r, bias = config.hidden_size, config.intermediate_size, config.recursion_delta_rank, config.use_bias
        gated = 2 if config.layer_form == "modernbert" else 1  # GeGLU: one map to the input and the gate
        self.query, self.key, self.value, self.dense = (LowRankDelta(h, h, r, bias) for _ in range(4))
        self.ffn = LowRankDelta(h, gated * i, r, bias)
        self.ffn_output = LowRankDelta(i, h, r, bias)
        self.attention_norm = NormDelta(h, bias)
        self.ffn_norm = NormDelta(h, bias)

    def attention_block(self, block: nn.Module):
        """query, key, value, dense and LayerNorm of ``block`` with this recursion's changes."""
        return (self.query.applied_to(block.query), self.key.applied_to(block.key),
                self.value.applied_to(block.value), self.dense.applied_to(block.dense),
                self.attention_norm.applied_to(block.LayerNorm))

    def ffn_block(self, block: nn.Module):
        """ffn, ffn_output and LayerNorm of ``block`` with this recursion's changes."""
        return (self.ffn.applied_to(block.ffn), self.ffn_output.applied_to(block.ffn_output),
                self.ffn_norm.applied_to(block.LayerNorm))
