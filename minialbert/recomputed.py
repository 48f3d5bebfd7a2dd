"""An activation whose output is not kept for backward: made again from its input when backward needs it.

In a feed-forward block ``W2 · act(W1 · x)`` autograd keeps both the (tokens, intermediate) pre-activation (for
act's backward) and act's output (for W2's weight gradient): two of the largest tensors of a training step
(25 MB each per recursion at b8 s512, intermediate 3072, bf16). ``recomputed_activation`` keeps only the first:
the output is packed as a reference to its input and made again, without gradient, in backward — one extra
element-wise pass per block, no extra matrix product (``torch.utils.checkpoint`` of the same code would redo W2).
"""

from __future__ import annotations

from typing import Callable

import torch


class _Recompute:
    """What is kept in place of act's output: the activation and its input. Made again once, at the first unpack
    in backward, and shared by every consumer op that kept it (a linear and a low-rank delta on the same input)."""

    __slots__ = ("activation", "pre", "value")

    def __init__(self, activation: Callable[[torch.Tensor], torch.Tensor], pre: torch.Tensor):
        self.activation, self.pre, self.value = activation, pre, None

    def view(self, shape: torch.Size) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.activation(self.pre).contiguous()
        return self.value.view(shape)


def recomputed_activation(activation: Callable[[torch.Tensor], torch.Tensor], pre: torch.Tensor,
                          consumer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``consumer(activation(pre))``; where ``consumer``'s backward keeps ``activation(pre)`` (or a reshaped view
    of it, as a linear layer keeps its input) it keeps ``pre`` instead, which ``activation``'s own backward keeps
    anyway. ``activation`` must be a pure element-wise function (no dropout, no state). Without autograd
    (inference, no grad) it is the plain composition."""
    if not (torch.is_grad_enabled() and pre.requires_grad):
        return consumer(activation(pre))
    out = activation(pre)
    if not out.is_contiguous():
        return consumer(out)
    ptr, numel, kept = out.data_ptr(), out.numel(), _Recompute(activation, pre.detach())

    def pack(t: torch.Tensor):
        if t.data_ptr() == ptr and t.numel() == numel and t.is_contiguous() and t.dtype == out.dtype:
            return kept, t.shape
        return t

    def unpack(saved):
        return saved[0].view(saved[1]) if isinstance(saved, tuple) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return consumer(out)
