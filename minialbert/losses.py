"""Distillation losses: pure functions, outputs in, named loss terms out.

Terms (weights default to the paper's 1, 3, 3, 5):
  mlm        cross-entropy of the student's logits on the masked tokens (mean over masked tokens);
  attention  KL(teacher || student) of the attention maps of each recursion and its mapped teacher layer;
  hidden     1 - cosine of hidden states (each recursion's output vs its mapped teacher layer), mean over real tokens;
  output     KL(teacher || student) of the MLM distributions at temperature T, times T^2, mean over masked tokens;
  sentence   1 - cosine of the sentence embeddings: the mean over real tokens of the last recursion and of the last
             mapped teacher layer (a sentence-embedding teacher's output pooled as it pools), mean over sentences
             (weight 0 unless a recipe sets it: not in the paper).
Per-recursion attention and hidden terms are summed over recursions.

Two modes, differing only in the attention term:
  ``paper``    the original code exactly: ``KLDivLoss(reduction='mean')`` over the maps' rows of real query tokens
               with 1e-12 added to both maps, i.e. the sum divided by heads x real tokens x L — every row's KL is
               also divided by the sequence length L, which makes the term ~L times too small to matter.
  ``default``  the KL of each row (a distribution over keys), averaged over heads and real query tokens.
Everything else (the teacher's dropout, fixed in ``teacher.py``) is outside this module. Logits arrive only
at the masked positions (M, V), for teacher and student alike; no masked_select copies are made.

The attention term has two implementations with the same value and gradient: ``maps_attention_kl`` on the
(B, heads, L, L) maps (the reference), and ``attention_kl.fused_attention_kl`` on queries and keys, which never
makes a map (see that module for the math and the EPS difference). ``distillation_losses`` picks by what it is
given: maps, or (query, key) pairs and ``TeacherAttention``.
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention_kl import EAGER_SCORES, ScoresKernels, TeacherAttention, fused_attention_kl

EPS = 1e-12  # the original's epsilon in log(map + eps), and torch's in CosineEmbeddingLoss

TERMS = ("total", "mlm", "attention", "hidden", "output", "sentence")
"""The whole-batch terms, in the order of ``LossTerms.scalars()``."""
RECORD_KEYS = ("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output", "loss_sentence")
"""Their names in ``metrics.jsonl`` and model cards (TensorBoard: ``loss/<term>``)."""
PER_RECURSION = ("attention", "hidden")
"""The terms also reported per recursion, in the order of ``LossTerms.scalars()``."""


@dataclass
class LossTerms:
    total: torch.Tensor
    mlm: torch.Tensor
    attention: torch.Tensor
    hidden: torch.Tensor
    output: torch.Tensor
    sentence: torch.Tensor
    attention_per_recursion: torch.Tensor
    """(N,)"""
    hidden_per_recursion: torch.Tensor
    """(N,)"""

    def scalars(self) -> torch.Tensor:
        """(6 + 2N,) float tensor: the ``TERMS``, then the per-recursion terms — for all-reduce."""
        head = torch.stack([getattr(self, t) for t in TERMS]).detach().float()
        return torch.cat([head, self.attention_per_recursion.detach().float(), self.hidden_per_recursion.detach().float()])

    @staticmethod
    def unpack(values: list[float]) -> tuple[dict[str, float], dict[str, list[float]]]:
        """``scalars()`` (e.g. averaged over ranks) back to named values: ({record key: value}, {term: per recursion})."""
        head, rest = values[:len(TERMS)], values[len(TERMS):]
        n = len(rest) // len(PER_RECURSION)
        return dict(zip(RECORD_KEYS, head)), {t: rest[i * n:(i + 1) * n] for i, t in enumerate(PER_RECURSION)}


def maps_attention_kl(s_probs: torch.Tensor, t_probs: torch.Tensor, row_mask: torch.Tensor, mode: str,
                 num_tokens: float | None = None) -> torch.Tensor:
    """KL(t || s) of attention maps (B, heads, L, L); rows of padded query tokens (row_mask (B, L) == 0) ignored.

    ``num_tokens``: the real-token count to average over (default: this batch's)."""
    s, t = s_probs.float(), t_probs.float()
    rows = row_mask.to(s.dtype)[:, None, :]  # (B, 1, L)
    heads, seq = s.shape[1], s.shape[-1]
    tokens = rows.sum() if num_tokens is None else num_tokens
    if mode == "paper":
        t = t + EPS
        row_kl = (t * (t.log() - (s + EPS).log())).sum(-1)  # (B, heads, L)
        return (row_kl * rows).sum() / (heads * tokens * seq)
    row_kl = (torch.xlogy(t, t) - t * (s + EPS).log()).sum(-1)  # (B, heads, L)
    return (row_kl * rows).sum() / (heads * tokens)


def _teacher_maps(teacher: TeacherAttention, row_mask: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, L) softmax(QKᵀ/√d + mask) of a teacher that handed over queries and keys (its window kept)."""
    q, k = teacher.query.float(), teacher.key.float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = row_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if teacher.window is not None:
        pos = torch.arange(q.shape[-2], device=q.device)
        allowed = allowed & ((pos[:, None] - pos[None, :]).abs() <= teacher.window)
    return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(-1)


def attention_term(student, teacher, row_mask: torch.Tensor, mode: str,
                   num_tokens: float | None = None, scores: ScoresKernels = EAGER_SCORES) -> torch.Tensor:
    """One recursion's attention KL: maps (B, heads, L, L) for both, or the student's (query, key) heads — (query,
    key, window) for a local recursion — and the teacher layer's ``TeacherAttention`` (maps-free). A ``deberta``-form
    student, whose scores are no query·key product, hands over its maps; its teacher (DeBERTa) its probabilities.
    ``scores``: the maps-free term's row math where it takes the ``scores`` route (``attention_kl``)."""
    if isinstance(teacher, TeacherAttention) and isinstance(student, torch.Tensor):
        return maps_attention_kl(student, teacher.probs if teacher.probs is not None else _teacher_maps(teacher, row_mask),
                                 row_mask, mode, num_tokens)
    if isinstance(teacher, TeacherAttention):
        query, key, *window = student
        return fused_attention_kl(query, key, teacher, row_mask, mode, num_tokens,
                                  student_window=window[0] if window else None, kernels=scores)
    return maps_attention_kl(student, teacher, row_mask, mode, num_tokens)


def hidden_cosine_sum(s_hidden: torch.Tensor, t_hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Sum over real tokens of 1 - cos(s, t), cos = <s,t> / sqrt((|s|^2 + eps)(|t|^2 + eps)) as in torch."""
    s, t = s_hidden.float(), t_hidden.float()
    cos = (s * t).sum(-1) / ((s.pow(2).sum(-1) + EPS) * (t.pow(2).sum(-1) + EPS)).sqrt()  # (B, L)
    return ((1 - cos) * token_mask.to(cos.dtype)).sum()


def sentence_cosine(s_hidden: torch.Tensor, t_hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the B sentences of 1 - cos of their mean-pooled (B, L, H) hidden states (real tokens only). Every
    micro-batch holds the same number of sentences, so the engine's average of these means is the global one."""
    m = token_mask.to(torch.float32)[..., None]
    s = (s_hidden.float() * m).sum(1)  # the sums: the cosine ignores the division by the token count
    t = (t_hidden.float() * m).sum(1)
    return (1 - F.cosine_similarity(s, t, dim=-1, eps=EPS)).mean()


def output_kl_sum(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of (M, V) logits at temperature T, summed over the M positions, times T^2."""
    s_log = F.log_softmax(s_logits.float() / temperature, dim=-1)
    t_prob = F.softmax(t_logits.float() / temperature, dim=-1)
    return F.kl_div(s_log, t_prob, reduction="sum") * temperature**2


def mlm_cross_entropy_sum(s_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the M masked positions; (M, V) logits, (M,) labels."""
    return F.cross_entropy(s_logits.float(), labels, reduction="sum")


@dataclass(frozen=True)
class LossKernels:
    """The element-wise terms as sums (the means divide outside, so that a compiled kernel never sees a changing
    count): these eager functions, or ``compiled.compiled_kernels()``' fused ones."""

    hidden_cosine_sum: Callable = hidden_cosine_sum
    output_kl_sum: Callable = output_kl_sum
    mlm_cross_entropy_sum: Callable = mlm_cross_entropy_sum
    attention_scores: ScoresKernels = EAGER_SCORES


EAGER = LossKernels()


def hidden_cosine(s_hidden: torch.Tensor, t_hidden: torch.Tensor, token_mask: torch.Tensor,
                  num_tokens: float | None = None, kernels: LossKernels = EAGER) -> torch.Tensor:
    """Mean over real tokens of 1 - cos(s, t)."""
    total = kernels.hidden_cosine_sum(s_hidden, t_hidden, token_mask)
    return total / (token_mask.sum() if num_tokens is None else num_tokens)


def output_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float,
              num_masked: float | None = None, kernels: LossKernels = EAGER) -> torch.Tensor:
    """KL(teacher || student) of (M, V) logits at temperature T, mean over the M positions, times T^2."""
    m = max(s_logits.shape[0], 1) if num_masked is None else num_masked
    return kernels.output_kl_sum(s_logits, t_logits, temperature) / m


def mlm_cross_entropy(s_logits: torch.Tensor, labels: torch.Tensor, num_masked: float | None = None,
                      kernels: LossKernels = EAGER) -> torch.Tensor:
    """Mean cross-entropy over the M masked positions; (M, V) logits, (M,) labels."""
    m = max(labels.shape[0], 1) if num_masked is None else num_masked
    return kernels.mlm_cross_entropy_sum(s_logits, labels) / m


def distillation_losses(
    *,
    student_hidden: list[torch.Tensor],
    student_attentions: list,
    student_logits: torch.Tensor | None,
    teacher_hidden: list[torch.Tensor],
    teacher_attentions: list,
    teacher_logits: torch.Tensor | None,
    attention_mask: torch.Tensor,
    masked_labels: torch.Tensor,
    weights: dict[str, float],
    temperature: float = 1.0,
    mode: str = "default",
    num_tokens: float | None = None,
    num_masked: float | None = None,
    kernels: LossKernels = EAGER,
) -> LossTerms:
    """All terms. ``student_hidden``: the N recursion outputs (not the embeddings); ``teacher_*``: the mapped
    layers, in recursion order. ``student_attentions`` / ``teacher_attentions``: maps, or (query, key) pairs /
    ``TeacherAttention`` (see ``attention_term``). ``teacher_logits`` None (an encoder-only teacher) turns the
    output term off; ``student_logits`` None (no term reads them, ``LossConfig.student_logits_used``) turns both
    logit terms off (reported as 0).

    ``num_tokens`` / ``num_masked``: the real-token and masked-token counts the means divide by (default: this
    batch's). Gradient accumulation passes the whole global batch's counts divided by the number of micro-batches,
    so that the accumulated gradient is that of one mean over the global batch, whatever its split.
    ``kernels``: the element-wise terms' implementation (eager, or compiled: ``train.compile``)."""
    att = torch.stack([attention_term(s, t, attention_mask, mode, num_tokens, kernels.attention_scores)
                       for s, t in zip(student_attentions, teacher_attentions)])
    hid = torch.stack([hidden_cosine(s, t, attention_mask, num_tokens, kernels)
                       for s, t in zip(student_hidden, teacher_hidden)])
    zero = hid.new_zeros(())
    mlm = zero if student_logits is None else mlm_cross_entropy(student_logits, masked_labels, num_masked, kernels)
    out = (output_kl(student_logits, teacher_logits, temperature, num_masked, kernels)
           if teacher_logits is not None and student_logits is not None else zero)
    total = weights["attention"] * att.sum() + weights["hidden"] * hid.sum()
    sentence = zero
    if weights.get("sentence", 0) > 0:  # off (the default): nothing computed
        sentence = sentence_cosine(student_hidden[-1], teacher_hidden[-1], attention_mask)
        total = total + weights["sentence"] * sentence
    if student_logits is not None:
        total = total + weights["mlm"] * mlm
    if teacher_logits is not None and student_logits is not None:
        total = total + weights["output"] * out
    return LossTerms(total, mlm, att.sum(), hid.sum(), out, sentence, att, hid)
