"""Task distillation's loss: the fine-tuned teacher's outputs mixed with the gold labels, row by row.

A row is an example (GLUE) or a word's first piece (NER). A row with a gold label learns
``weight x teacher term + (1 - weight) x gold term``; an augmented row (no gold label) learns the teacher term
alone; the loss is the mean over rows. ``--distill-hidden W`` adds W x general distillation's hidden-state term
on the task's inputs, where the shapes allow it (``hidden_term``).
- classification (GLUE, NER): teacher term = KL(teacher || student) of the temperature-softened distributions
  x T^2 (Hinton et al.: the gradient's scale does not change with T); gold term = cross-entropy;
- regression (STS-B): squared error to ``weight x teacher score + (1 - weight) x gold score`` (equal to the
  mixture of the two squared errors up to a constant), on the bi-encoder's scale (cosine) when it is one.
Defaults (``--distill-weight 0.5 --distill-temperature 1``; measured in docs/results.md): an even mix keeps the
gold labels' say where the teacher errs; T = 1 (TinyBERT's) scored higher on devel than T = 2 on NCBI-disease and
BC5CDR-chem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import hidden_cosine


@dataclass(frozen=True)
class DistillSettings:
    weight: float  # the teacher term's share on rows with a gold label
    temperature: float
    hidden: float = 0.0  # weight of the hidden-state term (general distillation's cosine), added to the above


def hidden_term(student_hidden: tuple, teacher_hidden: tuple, mask: torch.Tensor) -> torch.Tensor:
    """General distillation's hidden-state term on the task's inputs: mean over the student's recursions of
    1 - cos(recursion i, teacher layer round(i x L / N)) over real tokens (the embeddings are not compared)."""
    n, layers = len(student_hidden) - 1, len(teacher_hidden) - 1
    terms = [hidden_cosine(student_hidden[i], teacher_hidden[round(i * layers / n)], mask) for i in range(1, n + 1)]
    return torch.stack(terms).mean()


def distillation_loss(model, batch: dict[str, torch.Tensor], settings: DistillSettings, regression: bool,
                      teacher_model=None) -> torch.Tensor:
    """``batch`` as ``training.batches`` makes it, with ``teacher``: (B, C) logits, (B, L, C) per-piece logits
    (NaN where no target), or (B, 1) scores; labels -100 (classes) or NaN (scores) where there is no gold.
    ``teacher_model`` (the fine-tuned teacher, same tokenizer and width) runs alongside for ``settings.hidden``."""
    teacher, labels = batch["teacher"].float(), batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("teacher", "labels")}
    out = model(**inputs, output_hidden_states=settings.hidden > 0)
    loss = _prediction_term(out.logits.float(), teacher, labels, settings, regression, getattr(model, "scale", 1.0))
    if settings.hidden > 0:
        with torch.no_grad():
            teacher_hidden = teacher_model(**inputs, output_hidden_states=True).hidden_states
        loss = loss + settings.hidden * hidden_term(out.hidden_states, teacher_hidden, inputs["attention_mask"])
    return loss


def _prediction_term(logits, teacher, labels, settings: DistillSettings, regression: bool, scale: float):
    w = settings.weight
    if regression:
        pred, score = logits[:, 0], teacher[:, 0]
        gold = labels.float()
        target = torch.where(torch.isnan(gold), score, w * score + (1 - w) * torch.nan_to_num(gold))
        # A bi-encoder's scores are scale x cosine: the error is taken on the cosine's scale.
        return F.mse_loss(pred / scale, target / scale)
    rows = ~torch.isnan(teacher[..., 0])  # (B,) or (B, L)
    s, t, y = logits[rows], teacher[rows], labels[rows]  # (R, C), (R, C), (R,)
    temp = settings.temperature
    soft = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                    reduction="none").sum(-1) * temp**2  # (R,)
    has_gold = y != -100
    hard = F.cross_entropy(s, y.clamp(min=0), reduction="none") * has_gold  # (R,)
    per_row = torch.where(has_gold, w * soft + (1 - w) * hard, soft)
    return per_row.mean()
