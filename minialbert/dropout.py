"""Dropout with cheap masks on CPU: four mask elements from each 64-bit random draw.

Why: on CPU, ``F.dropout`` draws one ``bernoulli_`` float per element into a mask of the input's dtype, then
multiplies and divides: ~6.9 ns an element on a 2-core Xeon with AMX (bf16, (8, 128, 768)), 4-5 % of a
distillation step at s128 and, with the attention probabilities' masks, over 20 % at s512
(``../shared/perf/amx-step-profile.md``). Here one ``int64.random_()`` pass fills a quarter as many words,
viewed as 16-bit draws; each element is dropped where its low 15 bits fall under ``round(p · 2**15)`` (so the
drop probability is quantised to 1/32768: |p' - p| <= 1.5e-5, and kept elements are scaled by 1 / (1 - p')
exactly). The mask is a bool tensor (1 byte an element, kept for backward instead of a bf16 mask). Measured
(docs/performance.md): ~1.5 ns an element for the mask, against 4.5 ns for ``bernoulli_``.

Masks come from torch's default generator (or the one given), so ``torch.manual_seed`` and a restored RNG state
repeat them exactly. On CUDA, and inside ``torch.compile`` (whose kernels draw their own masks in the fused
element-wise code), ``F.dropout`` runs instead. Ships with every export, next to ``modeling_minialbert.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 15  # a 16-bit draw's low 15 bits: uniform on [0, 2**15)


def quantised(p: float) -> float:
    """The drop probability the masks realise: ``p`` rounded to a multiple of 1/32768."""
    return round(p * LEVELS) / LEVELS


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool tensor of ``shape``, True where an element is dropped (probability ``quantised(p)``)."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)  # [0, 2**63)
    draws = words.view(torch.int16)[:n].view(shape)  # four 16-bit draws per word; bits 0-62 are uniform
    return draws.bitwise_and(LEVELS - 1) < round(p * LEVELS)


class _MaskedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        dropped = drop_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - quantised(p))
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return x.masked_fill(dropped, 0.0).mul_(scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (dropped,) = ctx.saved_tensors
        return grad.masked_fill(dropped, 0.0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the cheap masks on CPU (see the module's docstring); ``F.dropout`` elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0.0 < quantised(p) < 1.0:
        return F.dropout(x, p, training)
    return _MaskedDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks are the cheap ones (``dropout``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
