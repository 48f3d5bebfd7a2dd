"""Attention with dropout on the probabilities, in blocks of query rows, never holding a (B, heads, L, L) tensor.

Why: on CPU, ``F.scaled_dot_product_attention`` has a flash kernel only without dropout; with dropout it takes the
math path, which upcasts bf16 to fp32 and keeps the (B, heads, L, L) probabilities, the dropout mask and the
dropped probabilities for backward — the maps the maps-free distillation exists to avoid. This function computes
exactly the eager attention of ``modeling_minialbert`` (scores in the inputs' dtype, additive mask, softmax,
dropout, @ V) one block of query rows at a time, keeps only q, k, v, an RNG seed and (up to ``KEPT_MASK_BYTES``)
the bool dropout masks, and in backward recomputes each block's probabilities (and regenerates a mask not kept
from the seed).

Dropout mask: ``dropout.drop_mask`` (four 15-bit draws from each 64-bit word, no float mask), from a generator
seeded per block (the seed drawn from torch's default generator, so ``torch.manual_seed`` makes runs repeatable);
dropped probabilities are zeroed in place and the 1 / (1 - p') scale (p' the drop probability so quantised,
|p' - p| <= 1.5e-5) is applied to the (rows, d) products instead of the (rows, L) block.
"""

from __future__ import annotations

import math

import torch

from .dropout import drop_mask, quantised

BLOCK_ELEMENTS = 1 << 24  # score elements per block: (B·heads, rows, L), rows = BLOCK_ELEMENTS // (B·heads·L)
KEPT_MASK_BYTES = 16 << 20
"""Dropout masks of at most this many bytes a call (bool, one byte an element: B·heads·L² — b8, 12 heads, L 256 is
6 MB) are kept for backward instead of drawn again from the seed (the draw was a quarter of the kernel's
element-wise work at L 128); larger ones (L 512: 25 MB a recursion) are regenerated, as the memory bound asks."""


def _dropped(shape: torch.Size, p: float, seed: int, block: int) -> torch.Tensor:
    """The block's bool dropout mask (True = dropped), regenerated identically from (seed, block)."""
    return drop_mask(shape, p, generator=torch.Generator().manual_seed(seed + block))


def _keep_scale(p: float) -> float:
    return 1.0 / (1.0 - quantised(p))


def _probs(q_block: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, heads: int) -> torch.Tensor:
    """(B·heads, rows, Lk) probabilities of pre-scaled queries, in the inputs' dtype as eager attention has them."""
    scores = torch.bmm(q_block, k.transpose(1, 2))
    if bias is not None:
        scores.view(-1, heads, *scores.shape[1:]).add_(bias)  # (B, heads, rows, Lk) + (B, 1|heads, 1, Lk)
    return scores.softmax(-1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> contiguous (B·heads, L, d): slicing query rows then needs no copies."""
    return t.reshape(-1, t.shape[2], t.shape[3])


def _scaled_rows(q: torch.Tensor) -> torch.Tensor:
    """The queries as (B·heads, L, d) rows times 1/√d (scaling the (L, d) queries, not the (L, L) scores)."""
    rows, scale = _rows(q), 1.0 / math.sqrt(q.shape[-1])
    return rows * scale if rows.data_ptr() == q.data_ptr() else rows.mul_(scale)  # never the caller's tensor


class _BlockwiseAttention(torch.autograd.Function):
    """q, k (B, heads, L, d) as the projections give them: kept for backward as they are (the attention KL keeps the
    same tensors), their (B·heads, L, d) row copies made again in backward; v kept as its row copy."""

    @staticmethod
    def forward(ctx, q_heads, k_heads, v, bias, p, seed, heads):
        q, k = _scaled_rows(q_heads), _rows(k_heads)
        rows = max(1, min(q.shape[1], BLOCK_ELEMENTS // (q.shape[0] * k.shape[1])))
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        keep = p > 0 and q.shape[0] * q.shape[1] * k.shape[1] <= KEPT_MASK_BYTES
        masks = []
        for block, start in enumerate(range(0, q.shape[1], rows)):
            probs = _probs(q[:, start:start + rows], k, bias, heads)
            if p > 0:
                dropped = _dropped(probs.shape, p, seed, block)
                probs.masked_fill_(dropped, 0.0)
                masks += [dropped] if keep else []
            torch.bmm(probs, v, out=out[:, start:start + rows])
        if p > 0:
            out.mul_(_keep_scale(p))
        ctx.save_for_backward(q_heads, k_heads, v, bias, *masks)
        ctx.p, ctx.seed, ctx.rows, ctx.heads = p, seed, rows, heads
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        q_heads, k_heads, v, bias, *masks = ctx.saved_tensors
        q, k = _scaled_rows(q_heads), _rows(k_heads)
        p, seed, rows, heads = ctx.p, ctx.seed, ctx.rows, ctx.heads
        d_out = d_out.contiguous() if p == 0 else d_out * _keep_scale(p)  # the kept probabilities' scale, once
        d_q, d_k, d_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for block, start in enumerate(range(0, q.shape[1], rows)):
            q_b, d_out_b = q[:, start:start + rows], d_out[:, start:start + rows]
            probs = _probs(q_b, k, bias, heads)  # (B·heads, rows, Lk), recomputed
            d_probs = torch.bmm(d_out_b, v.transpose(1, 2))
            if p > 0:
                dropped = masks[block] if masks else _dropped(probs.shape, p, seed, block)
                d_v += torch.bmm(probs.masked_fill(dropped, 0.0).transpose(1, 2), d_out_b)
                d_probs.masked_fill_(dropped, 0.0)
            else:
                d_v += torch.bmm(probs.transpose(1, 2), d_out_b)
            d_scores = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
            torch.bmm(d_scores, k, out=d_q[:, start:start + rows])
            # bmm then add (not baddbmm_): torch.utils.flop_counter does not count the in-place baddbmm_
            d_k += torch.bmm(d_scores.transpose(1, 2), q_b)  # q_b carries the scale already
        d_q.mul_(1.0 / math.sqrt(q.shape[-1]))
        return d_q.view(q_heads.shape), d_k.view(k_heads.shape), d_v, None, None, None, None


def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ/√d + bias) with dropout ``dropout_p``, @ v: q, k (B, heads, L, d), v (B, heads, L, dv),
    ``bias`` broadcastable to (B, heads, L, L) with a single query row, e.g. (B, 1, 1, L) 0 / finfo.min."""
    b, h, seq, _ = q.shape
    seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
    out = _BlockwiseAttention.apply(q, k, _rows(v), bias, float(dropout_p), seed, h)
    return out.view(b, h, seq, v.shape[-1])
