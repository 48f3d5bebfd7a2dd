"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"), right under ZeRO partitioning.

The update of one parameter tensor ``w`` at step t (fp32, whatever the training precision):

    m = β1·m + (1-β1)·g            v = β2·v + (1-β2)·g²                 (Adam moments)
    u = (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε) + λ·w               (decoupled weight decay inside)
    r = ||w|| / ||u||  (1 where either norm is 0; capped at ``max_trust_ratio`` unless that is 0)
    w = w - lr·r·u

Groups with ``trust_ratio: False`` (biases and LayerNorm weights, which also get no decay) take the plain
update ``w - lr·u``. Gradient clipping is not done here: DeepSpeed clips the global gradient norm to
``optim.max_grad_norm`` before every step, as it does for AdamW (and as NVIDIA's BERT LAMB recipe does).

Why the layout: DeepSpeed's ZeRO (and its bf16/fp16 wrappers) flattens each parameter group into one buffer and
hands this optimizer a flat fp32 *partition* of it, holding pieces of several tensors (a tensor may also be cut
between two ranks). ``||w||`` and ``||u||`` must be those of each whole original tensor, so the engine tells the
optimizer, for each flat tensor it steps, which (tensor, offset, length) pieces it holds (``set_layout``); a step
sums the squared norms of the pieces per original tensor, sums that small vector over the ranks that hold the
other pieces (one all-reduce, no gather of parameters) and scales each piece by its tensor's ratio. Any rank
count and ZeRO stage then gives the update a single process gives. No DeepSpeed here: ``engine.py`` builds the
layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Piece:
    tensor: int
    """Index of the original parameter tensor (0 .. num_tensors-1)."""
    start: int
    """Offset of the piece in the flat tensor the optimizer steps."""
    length: int


class Lamb(torch.optim.Optimizer):
    """LAMB over whole tensors, or over flat partitions once ``set_layout`` says which tensors they hold.

    ``await_layout``: steps before ``set_layout`` only create the state (DeepSpeed's fp16 wrapper steps once with
    zero gradients while it is being built, before the engine can tell the layout)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 max_trust_ratio: float = 10.0, await_layout: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, trust_ratio=True)
        super().__init__(params, defaults)
        self.max_trust_ratio = max_trust_ratio
        self._awaiting = await_layout
        self._layout: dict[int, tuple[torch.Tensor, list[Piece]]] = {}
        self._num_tensors = 0
        self._all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def set_layout(self, layout: list[tuple[torch.Tensor, list[Piece]]], num_tensors: int,
                   all_reduce: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """``layout``: every tensor this optimizer will step, with the pieces of original tensors it holds.
        ``all_reduce``: sums a float64 CPU vector over the ranks holding the other pieces (None: each rank holds
        whole tensors)."""
        self._layout = {id(t): (t, pieces) for t, pieces in layout}
        self._num_tensors = num_tensors
        self._all_reduce = all_reduce
        self._awaiting = False

    def _pieces(self, p: torch.Tensor) -> list[Piece] | None:
        if not self._layout:
            return None  # no layout: every parameter is a whole tensor of its own
        entry = self._layout.get(id(p))
        if entry is None or entry[0] is not p:
            raise RuntimeError(f"LAMB was given a tensor of {p.numel()} elements that is not in its layout "
                               f"(its trust ratios would be per partition, not per tensor)")
        return entry[1]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # (param, group, update)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                if self._awaiting:
                    continue
                grad = p.grad.float()
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1**t)) / ((exp_avg_sq / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p.float(), alpha=group["weight_decay"])
                work.append((p, group, update))
        if self._awaiting:
            return loss
        adaptive = [(p, u) for p, group, u in work if group["trust_ratio"]]
        ratios = self._trust_ratios(adaptive) if adaptive else {}
        for p, group, update in work:
            lr = group["lr"]
            if not group["trust_ratio"]:
                p.add_(update.to(p.dtype), alpha=-lr)
                continue
            pieces = self._pieces(p)
            if pieces is None:
                p.add_(update.to(p.dtype), alpha=-lr * ratios[id(p)])
                continue
            flat, flat_update = p.view(-1), update.view(-1)
            for piece in pieces:  # padding between and after the pieces stays as it is (zeros)
                flat.narrow(0, piece.start, piece.length).add_(
                    flat_update.narrow(0, piece.start, piece.length).to(p.dtype), alpha=-lr * ratios[piece.tensor])
        return loss

    def _trust_ratios(self, adaptive: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[int, float]:
        """{original tensor index (or id of a whole parameter without a layout): ||w|| / ||u||}."""
        if not self._layout:
            w_sq = torch.stack(torch._foreach_norm([p.float() for p, _ in adaptive])).double().square()
            u_sq = torch.stack(torch._foreach_norm([u for _, u in adaptive])).double().square()
            return {id(p): r for (p, _), r in zip(adaptive, self._ratio(w_sq.cpu(), u_sq.cpu()).tolist())}
        index, w_views, u_views = [], [], []
        for p, u in adaptive:
            for piece in self._pieces(p):
                index.append(piece.tensor)
                w_views.append(p.view(-1).narrow(0, piece.start, piece.length).float())
                u_views.append(u.view(-1).narrow(0, piece.start, piece.length))
        # (2, num_tensors): squared norms of w and u summed over this rank's pieces, then over the ranks.
        sums = torch.zeros(2, self._num_tensors, dtype=torch.float64)
        if index:
            per_piece = torch.stack([torch.stack(torch._foreach_norm(w_views)),
                                     torch.stack(torch._foreach_norm(u_views))]).double().square().cpu()
            sums.index_add_(1, torch.tensor(index), per_piece)
        if self._all_reduce is not None:
            sums = self._all_reduce(sums)  # every rank calls this step with the same groups: the ranks agree
        return dict(enumerate(self._ratio(sums[0], sums[1]).tolist()))

    def _ratio(self, w_sq: torch.Tensor, u_sq: torch.Tensor) -> torch.Tensor:
        ratio = torch.where((w_sq > 0) & (u_sq > 0), w_sq.sqrt() / u_sq.sqrt().clamp_min(1e-300), 1.0)
        return ratio.clamp(max=self.max_trust_ratio) if self.max_trust_ratio else ratio
