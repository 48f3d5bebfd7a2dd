"""Attention distillation without attention maps: the exact KL(teacher || student) of attention rows, computed
from queries and keys by attention calls, forward and backward, with no (B, heads, L, L) tensor.

For one head and one query row i, with the student's scaled masked scores S_ij = q_i·k_j / √d over the real keys
j, its probabilities s_i = softmax(S_i) and the teacher's t_i = softmax(S^t_i):

    KL(t_i || s_i) = Σ_j t_ij log t_ij  -  Σ_j t_ij S_ij  +  LSE_j(S_ij)
                   = H_i                -  q_i·(T K)_i / √d  +  LSE_i

- (T K)_i = Σ_j t_ij k_j is attention with the teacher's queries and keys and the *student's* keys as values;
- LSE_i comes with the student's attention over its own keys (the flash kernels return it);
- H_i = Σ_j t_ij log t_ij = q^t_i·(T K^t)_i / √d - LSE^t_i, the teacher's negative entropy, one more attention
  call, without gradient.

Gradient: ∂KL_i/∂S_ij = s_ij - t_ij, so for row weights g_i

    ∂q_i = g_i ((S K)_i - (T K)_i) / √d,          (S K)_i = Σ_j s_ij k_j  (student attention, its keys as values)
    ∂k_j = (Σ_i s_ij g_i q_i - Σ_i t_ij g_i q_i) / √d.

The column sums Σ_i p_ij x_i (p = s or t) are attention with the roles swapped: queries k_j, keys q_i, values x_i
and a per-key bias -LSE_i, so that exp(S_ij - LSE_i) = p_ij; that call's own normaliser is exp(LSE'_j) = Σ_i p_ij
(at most L), hence Σ_i p_ij x_i = exp(LSE'_j) · out'_j. Forward: three attention calls per layer (one for the
teacher's LSE and entropy); backward: two. Everything is O(B·heads·L·d) in memory.

Three routes compute this (``method``):
- ``attention`` (the default): the five attention calls above, each a fused kernel that returns its LSE (CPU
  flash attention; CUDA memory-efficient attention, which takes the additive bias);
- ``blockwise``: blocks of query rows, each block's (B, heads, rows, L) log-probabilities of both models
  recomputed from q and k (forward, and again in backward), KL summed per row, ∂S = g (s - t) fed straight to
  two matmuls: 3 attention-forwards of matmul work instead of 5, but fp32 element-wise work on every block.
  Memory O(block + B·heads·L·d). Measured slower on the 2-core EPYC VM (1.05 s against 0.83 s at b8 L512,
  docs/performance.md); kept as the exact per-element cross-check and for devices without such a kernel.
- ``scores`` (the default for bf16 inputs on a CPU, up to ``SCORES_MAX_LEN`` keys): blocks of query rows, both
  models' q·kᵀ products as matrix products in the inputs' dtype (bf16: the bf16 matrix units, one rounding of
  each product, as the models' own attention has it), the row math on them in fp32 — KL per row forward, ∂S =
  g (s - t) backward — each one element-wise function (``ScoresKernels``; ``train.compile`` fuses each into one
  pass), the products made again in backward. Measured on an Intel Xeon with AMX (bf16, b8, 12 heads, d 64,
  L 128): 12 ms a recursion forward + backward, against 32 ms for ``attention``, whose five calls run in fp32.
  Memory O(block + B·heads·L·d).

Teachers whose attention is not one softmax(QKᵀ/√d + mask) (``teacher_families``): a local window (ModernBERT's
sliding layers, |i - j| <= w) is part of the teacher's mask, and such a layer takes the blockwise route, whose
score blocks carry it; a teacher that hands over its own probabilities t (DeBERTa's disentangled attention, generic
encoders) gets ``map_row_kl``: Σ_j t_ij log t_ij - q_i·(T K)_i / √d + LSE_i, T K one matmul with the teacher's
map, the student's LSE and its gradient from attention calls (no student map).

Exactness against ``losses.maps_attention_kl`` (the materialised maps): that one adds EPS = 1e-12 inside log(s + EPS)
(and to t in paper mode); this module computes the KL itself. The two differ by about EPS · Σ_j t_ij / s_ij per
row — below fp32 resolution unless a student probability falls under ~1e-8 where the teacher's does not (the
materialised term then clips log s at log 1e-12 = -27.6, this one does not). Paper mode's extra
EPS·Σ_j (log(t_ij + EPS) - log(s_ij + EPS)) per row is likewise dropped. The scaling per mode is the same:
``default`` divides the sum of row KLs by heads x real tokens, ``paper`` also by L.

Masking: padded keys get a -inf bias (finfo.min in the blockwise route, so that 0 · (log t - log s) stays 0);
padded query rows get weight 0 (and so no gradient). A sequence with no
real key at all (an all-padding row of the batch) would have LSE = -inf; it is computed as if every key were
real (finite numbers) and all its rows are weighted 0, as the materialised path's rows are. The KL calls run in
fp32 (fp64 for fp64 inputs) whatever the models' dtype, as the materialised loss upcasts its maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

CHUNK_ROWS = 256  # query rows per block of the fallback attention: a (B, heads, 256, L) score block at most
BLOCK_ELEMENTS = 1 << 22  # scores per block of the blockwise KL: (B, heads, rows, L), a few fp32 copies of it live
METHODS = ("attention", "blockwise", "scores")
SCORES_MAX_LEN = 256
"""Up to this many keys a bf16 CPU term takes the ``scores`` route (its products on the bf16 units); longer, the
``attention`` route's fused calls (O(L) memory per row, no (rows, L) block)."""


@dataclass
class TeacherAttention:
    """What the attention KL needs of one mapped teacher layer — its query and key heads, no map; or, for a
    family whose attention is no softmax(QKᵀ/√d + mask) (DeBERTa's disentangled terms), its probabilities."""

    query: torch.Tensor | None = None
    """(B, heads, L, d), the teacher's dtype."""
    key: torch.Tensor | None = None
    """(B, heads, L, d)."""
    window: int | None = None
    """The layer attends only to keys with |i - j| <= window (ModernBERT's local layers); the term then takes the
    blockwise route, whose score blocks carry the window."""
    probs: torch.Tensor | None = None
    """(B, heads, L, L) the teacher's own probabilities, instead of query and key (the student side stays
    maps-free: ``map_row_kl``)."""


# ----- attention with its log-sum-exp ---------------------------------------------------------------------------
def _attend_chunked(q, k, v, bias, scale):
    """Plain PyTorch, blocks of CHUNK_ROWS query rows: at most a (B, heads, CHUNK_ROWS, Lk) score block lives."""
    outs, lses = [], []
    for start in range(0, q.shape[-2], CHUNK_ROWS):
        scores = q[..., start:start + CHUNK_ROWS, :] @ k.transpose(-1, -2) * scale + bias  # (B, h, C, Lk)
        lse = scores.logsumexp(-1)  # (B, h, C)
        outs.append(torch.exp(scores - lse[..., None]) @ v)
        lses.append(lse)
    return torch.cat(outs, -2), torch.cat(lses, -1)


def _attend_cuda(q, k, v, bias, scale):
    """Memory-efficient attention (it takes an additive bias and returns the LSE); the bias is a broadcast view."""
    lk = k.shape[-2]
    pad = -lk % 16  # the kernel wants the bias rows 16-element aligned; pad and slice, as SDPA itself does
    full = torch.zeros(*bias.shape[:-1], lk + pad, dtype=q.dtype, device=q.device)
    full[..., :lk] = bias
    b = full[..., :lk].expand(q.shape[0], q.shape[1], q.shape[-2], lk)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, b, True, scale=scale)[:2]
    return out, lse[..., :q.shape[-2]]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    """softmax(q kᵀ·scale + bias) v and its log-sum-exp, without a (Lq, Lk) tensor where a fused kernel exists.

    q (B, h, Lq, d), k (B, h, Lk, d), v (B, h, Lk, dv); ``bias`` (B, 1|h, 1, Lk): one additive bias per key
    (0 or -inf for masking, -LSE for the swapped calls). Returns out (B, h, Lq, dv) and lse (B, h, Lq).
    No autograd: callers differentiate by hand."""
    with torch.no_grad():
        if q.device.type == "cpu":
            # CPU flash attention (fp32/fp64/bf16) takes a broadcast additive mask and returns the LSE. The mask
            # must be contiguous: given a strided one (e.g. a view of its own (B, L, heads)-laid-out LSE, as the
            # swapped calls' -LSE bias is) the kernel expands it to a full (B, heads, Lq, Lk) copy.
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, attn_mask=bias.to(q.dtype).contiguous(), scale=scale)
        if q.device.type == "cuda":
            try:
                return _attend_cuda(q, k, v, bias, scale)
            except RuntimeError:  # a shape/dtype the kernel refuses: the blockwise fallback is exact too
                pass
        return _attend_chunked(q, k, v, bias.to(q.dtype), scale)


# ----- masking ----------------------------------------------------------------------------------------------------
def key_bias(attention_mask: torch.Tensor, dtype: torch.dtype, fill: float = float("-inf")):
    """(B, L) 0/1 mask -> additive key bias (B, 1, 1, L) (0 / ``fill``) and the keys treated as real (B, L) bool.

    A sequence without any real key attends to all its keys instead (finite numbers; its rows weigh 0)."""
    real = attention_mask.bool()
    real = real | ~real.any(-1, keepdim=True)
    bias = torch.zeros(real.shape, dtype=dtype, device=real.device).masked_fill(~real, fill)
    return bias[:, None, None, :], real


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----- the attention route ------------------------------------------------------------------------------------------
class _RowKL(torch.autograd.Function):
    """KL(t_i || s_i) per query row (B, h, L) from both models' queries and keys (B, h, L, d) in their own dtype;
    the attention calls run in the compute dtype ``dt``. Differentiable in the student's q and k only.

    Saved for backward: the inputs as given (bf16 in a bf16 run: the student's are the tensors its attention saves
    anyway) and one fp32 (S K - T K); the fp32 copies are made again in backward. Half the memory of keeping the
    six fp32 tensors (5/6 of it in a bf16 run), for four casts a recursion."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, bias, real, dt):
        scale = 1.0 / math.sqrt(q_s.shape[-1])
        qs, ks, qt, kt = (x.to(dt) for x in (q_s, k_s, q_t, k_t))
        t_self, lse_t = attend(qt, kt, kt, bias, scale)  # Σ_j t_ij k^t_j, LSE^t_i
        neg_entropy = (qt * t_self).sum(-1) * scale - lse_t  # Σ_j t_ij log t_ij
        del t_self
        tk, _ = attend(qt, kt, ks, bias, scale)  # (B, h, L, d): Σ_j t_ij k_j
        sk, lse_s = attend(qs, ks, ks, bias, scale)  # Σ_j s_ij k_j and LSE_i
        row_kl = neg_entropy + lse_s - (qs * tk).sum(-1) * scale
        ctx.save_for_backward(q_s, k_s, q_t, k_t, lse_t, lse_s, sk.sub_(tk), real)
        ctx.scale, ctx.dt = scale, dt
        return row_kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad (B, h, L): g_i
        q_s, k_s, q_t, k_t, lse_t, lse_s, sk_minus_tk, real = ctx.saved_tensors
        scale, dt = ctx.scale, ctx.dt
        q_s, k_s, q_t, k_t = (x.to(dt) for x in (q_s, k_s, q_t, k_t))
        g = grad[..., None]  # (B, h, L, 1)
        d_q = g * sk_minus_tk * scale
        x = g * q_s  # (B, h, L, d): the values of the swapped calls
        # Σ_i s_ij x_i and Σ_i t_ij x_i: queries k_j, keys q_i, bias -LSE_i (one per key of the swapped call).
        col_s, lse_cs = attend(k_s, q_s, x, -lse_s[:, :, None, :], scale)
        col_t, lse_ct = attend(k_t, q_t, x, -lse_t[:, :, None, :], scale)
        d_k = (lse_cs.exp()[..., None] * col_s - lse_ct.exp()[..., None] * col_t) * scale
        # Padded keys j had no weight in any row; their swapped sums are meaningless (even inf), so zero them.
        d_k = d_k.masked_fill(~real[:, None, :, None], 0.0)
        return d_q, d_k, None, None, None, None, None


class _StudentLSE(torch.autograd.Function):
    """LSE_i(S) of the student's scaled masked scores per query row (B, h, L), differentiable in q and k without
    a map: ∂LSE_i/∂S_ij = s_ij, so ∂q_i = g_i (S K)_i / √d and ∂k_j = Σ_i s_ij g_i q_i / √d (a swapped call)."""

    @staticmethod
    def forward(ctx, q_s, k_s, bias, real):
        scale = 1.0 / math.sqrt(q_s.shape[-1])
        sk, lse_s = attend(q_s, k_s, k_s, bias, scale)
        ctx.save_for_backward(q_s, k_s, lse_s, sk, real)
        ctx.scale = scale
        return lse_s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q_s, k_s, lse_s, sk, real = ctx.saved_tensors
        g = grad[..., None]
        col, lse_c = attend(k_s, q_s, g * q_s, -lse_s[:, :, None, :], ctx.scale)
        d_k = (lse_c.exp()[..., None] * col * ctx.scale).masked_fill(~real[:, None, :, None], 0.0)
        return g * sk * ctx.scale, d_k, None, None


def map_row_kl(query: torch.Tensor, key: torch.Tensor, t_probs: torch.Tensor, bias: torch.Tensor,
               real: torch.Tensor) -> torch.Tensor:
    """KL(t_i || s_i) per row (B, heads, L) from the teacher's map t (B, heads, L, L) and the student's query and
    key heads: Σ_j t_ij log t_ij - q_i·(T K)_i / √d + LSE_i. The only (L, L) tensor is the teacher's own map."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    t = t_probs.to(query.dtype)
    cross = (query * (t @ key)).sum(-1) * scale  # Σ_j t_ij S_ij, differentiable through autograd
    return torch.xlogy(t, t).sum(-1) - cross + _StudentLSE.apply(query, key, bias, real)


# ----- the blockwise route -------------------------------------------------------------------------------------------
def _log_probs(q_block: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, heads, rows, Lk) log-probabilities of pre-scaled queries; padded keys at about finfo.min."""
    return (q_block @ k.transpose(-1, -2) + bias).log_softmax(-1)


def _window_bias(bias: torch.Tensor, start: int, rows: int, window: int | None) -> torch.Tensor:
    """The teacher's bias for query rows start..start+rows: ``bias`` (B, 1, 1, Lk), and finfo.min outside a local
    window |i - j| <= window (then (B, 1, rows, Lk))."""
    if window is None:
        return bias
    lk = bias.shape[-1]
    i = torch.arange(start, min(start + rows, lk), device=bias.device)[:, None]
    j = torch.arange(lk, device=bias.device)[None, :]
    return bias.masked_fill((i - j).abs() > window, torch.finfo(bias.dtype).min)


class _BlockwiseRowKL(torch.autograd.Function):
    """KL(t_i || s_i) per query row, (B, heads, L), from pre-scaled contiguous queries: blocks of query rows."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, bias, window=None, s_window=None):
        b, h, seq, _ = q_s.shape
        rows = max(1, min(seq, BLOCK_ELEMENTS // (b * h * k_s.shape[-2])))
        out = []
        for start in range(0, seq, rows):
            log_s = _log_probs(q_s[..., start:start + rows, :], k_s, _window_bias(bias, start, rows, s_window))
            log_t = _log_probs(q_t[..., start:start + rows, :], k_t, _window_bias(bias, start, rows, window))
            out.append((log_t.exp() * (log_t - log_s)).sum(-1))
        ctx.save_for_backward(q_s, k_s, q_t, k_t, bias)
        ctx.rows, ctx.window, ctx.s_window = rows, window, s_window
        return torch.cat(out, -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad (B, heads, L): g_i
        q_s, k_s, q_t, k_t, bias = ctx.saved_tensors
        rows = ctx.rows
        d_q, d_k = torch.empty_like(q_s), torch.zeros_like(k_s)
        for start in range(0, q_s.shape[-2], rows):
            q_b = q_s[..., start:start + rows, :]
            s = _log_probs(q_b, k_s, _window_bias(bias, start, rows, ctx.s_window)).exp_()
            t_bias = _window_bias(bias, start, rows, ctx.window)
            t = _log_probs(q_t[..., start:start + rows, :], k_t, t_bias).exp_()
            d_scores = (s - t) * grad[..., start:start + rows, None]  # (B, heads, rows, Lk): g_i (s_ij - t_ij)
            d_q[..., start:start + rows, :] = d_scores @ k_s
            d_k += d_scores.transpose(-1, -2) @ q_b  # q_b carries the scale already
        return d_q, d_k, None, None, None, None, None  # d_q: of the pre-scaled queries (autograd applies the scale)


# ----- the scores route ---------------------------------------------------------------------------------------------
def scores_row_kl(s_scores: torch.Tensor, t_scores: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """KL(t_i || s_i) per query row (..., rows) from both models' q·kᵀ products (..., rows, Lk) in their dtype;
    ``bias`` (B, 1, 1, Lk) per key, 0 or finfo.min, in the compute dtype the row math runs in (fp32; fp64 for fp64)."""
    log_s = (s_scores.to(bias.dtype) * scale + bias).log_softmax(-1)
    log_t = (t_scores.to(bias.dtype) * scale + bias).log_softmax(-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def scores_row_kl_grad(s_scores: torch.Tensor, t_scores: torch.Tensor, bias: torch.Tensor, scale: float,
                       grad: torch.Tensor) -> torch.Tensor:
    """∂(Σ_i g_i KL_i)/∂(q_i·k_j) = g_i (s_ij - t_ij) · scale, in the products' dtype; ``grad`` (..., rows) the g_i."""
    s = (s_scores.to(bias.dtype) * scale + bias).softmax(-1)
    t = (t_scores.to(bias.dtype) * scale + bias).softmax(-1)
    return ((s - t) * (grad.to(bias.dtype)[..., None] * scale)).to(s_scores.dtype)


@dataclass(frozen=True)
class ScoresKernels:
    """The ``scores`` route's element-wise row math: these functions, or ``torch.compile``'d ones
    (``compiled.compiled_kernels``). Pure functions: no state, no random numbers."""

    row_kl: Callable = scores_row_kl
    row_kl_grad: Callable = scores_row_kl_grad


EAGER_SCORES = ScoresKernels()


def scores_route(dtype: torch.dtype, device: torch.device, seq: int) -> bool:
    """Whether a term of ``dtype`` on ``device`` over ``seq`` keys takes the ``scores`` route by default."""
    return dtype == torch.bfloat16 and device.type == "cpu" and seq <= SCORES_MAX_LEN


def score_block_rows(b: int, h: int, lq: int, lk: int) -> int:
    """Query rows per block: the largest power of two whose (B, heads, rows, Lk) block fits BLOCK_ELEMENTS (so
    that the blocks of a power-of-two length are all one shape: one compiled kernel), at most Lq."""
    rows = max(1, BLOCK_ELEMENTS // (b * h * lk))
    return min(lq, 1 << (rows.bit_length() - 1))


class _ScoresRowKL(torch.autograd.Function):
    """KL(t_i || s_i) per query row (B, heads, L) from both models' query and key heads (B, heads, L, d), in blocks
    of query rows; keeps the inputs as given (the tensors the student's attention keeps anyway) and makes the
    products again in backward. Differentiable in the student's q and k only."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, bias, kernels: ScoresKernels):
        scale = 1.0 / math.sqrt(q_s.shape[-1])
        qs, ks, qt, kt = (x.contiguous() for x in (q_s, k_s, q_t, k_t))
        rows = score_block_rows(qs.shape[0], qs.shape[1], qs.shape[2], ks.shape[2])
        out = [kernels.row_kl(qs[..., a:a + rows, :] @ ks.transpose(-1, -2),
                              qt[..., a:a + rows, :] @ kt.transpose(-1, -2), bias, scale)
               for a in range(0, qs.shape[2], rows)]
        ctx.save_for_backward(q_s, k_s, q_t, k_t, bias)
        ctx.scale, ctx.rows, ctx.kernels = scale, rows, kernels
        return torch.cat(out, -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad (B, heads, L): g_i
        q_s, k_s, q_t, k_t, bias = ctx.saved_tensors
        qs, ks, qt, kt = (x.contiguous() for x in (q_s, k_s, q_t, k_t))
        rows, d_q, d_k = ctx.rows, torch.empty_like(qs), torch.zeros_like(ks)
        for a in range(0, qs.shape[2], rows):
            q_b = qs[..., a:a + rows, :]
            d_scores = ctx.kernels.row_kl_grad(q_b @ ks.transpose(-1, -2), qt[..., a:a + rows, :] @ kt.transpose(-1, -2),
                                               bias, ctx.scale, grad[..., a:a + rows])
            torch.matmul(d_scores, ks, out=d_q[..., a:a + rows, :])
            d_k += d_scores.transpose(-1, -2) @ q_b
        return d_q, d_k, None, None, None, None


# ----- the term ---------------------------------------------------------------------------------------------------
def fused_attention_kl(query: torch.Tensor, key: torch.Tensor, teacher: TeacherAttention,
                       attention_mask: torch.Tensor, mode: str, num_tokens: float | None = None,
                       method: str | None = None, student_window: int | None = None,
                       kernels: ScoresKernels = EAGER_SCORES) -> torch.Tensor:
    """The attention term of one recursion from the student's (B, heads, L, d) queries and keys and the mapped
    teacher layer's ``TeacherAttention``; same value and scaling as ``losses.maps_attention_kl`` on the maps (see the
    module docstring for the EPS difference). ``attention_mask`` (B, L): padded query rows are ignored.
    ``method``: "attention", "blockwise" or "scores" (see the module docstring); None: "scores" where
    ``scores_route`` says, else "attention". ``student_window``: the student recursion attends only to
    |i - j| <= it (a ``modernbert``-form local recursion). ``kernels``: the scores route's row math."""
    method = method or ("scores" if scores_route(query.dtype, query.device, key.shape[-2]) else "attention")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    dt = compute_dtype(query)
    heads, seq = query.shape[1], query.shape[2]
    if teacher.probs is not None:
        bias, real = key_bias(attention_mask, dt)
        row_kl = map_row_kl(query.to(dt), key.to(dt), teacher.probs.to(dt), bias, real)
    elif method == "blockwise" or teacher.window is not None or student_window is not None:  # only blocks window
        q_t, k_t = teacher.query.to(dt), teacher.key.to(dt)
        bias, real = key_bias(attention_mask, dt, torch.finfo(dt).min)
        scale = 1.0 / math.sqrt(query.shape[-1])
        # Pre-scaled contiguous queries: the (L, d) scaling replaces an (L, L) one, and row blocks slice freely.
        row_kl = _BlockwiseRowKL.apply((query.to(dt) * scale).contiguous(), key.to(dt).contiguous(),
                                       (q_t * scale).contiguous(), k_t.contiguous(), bias,
                                       teacher.window, student_window)  # (B, heads, L)
    elif method == "scores":
        bias, real = key_bias(attention_mask, dt, torch.finfo(dt).min)
        row_kl = _ScoresRowKL.apply(query, key, teacher.query.to(query.dtype), teacher.key.to(query.dtype), bias,
                                    kernels)
    else:
        bias, real = key_bias(attention_mask, dt)
        row_kl = _RowKL.apply(query, key, teacher.query, teacher.key, bias, real, dt)
    rows = (attention_mask.bool() & real.any(-1, keepdim=True)).to(dt)[:, None, :]  # (B, 1, L)
    tokens = rows.sum() if num_tokens is None else num_tokens
    total = (row_kl * rows).sum()
    return total / (heads * tokens * seq) if mode == "paper" else total / (heads * tokens)
