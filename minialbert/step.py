"""The distillation training step: ``train_step`` (forward, backward, accumulation, the optimizer step) and the
forward it repeats, ``distillation_forward`` (teacher and student on the same batch, then every loss term).

Shared by the training loop (``minialbert/distill.py``) and the benchmark (``bench/distill_recipes.py``). Logits are
computed only at the masked positions (flat indices into B*L, found with ``nonzero``), for teacher and student
alike. The attention term is maps-free by default (``attention_kl="fused"``: the student's attention runs through
SDPA and hands its query and key heads to the loss, the teacher keeps only queries, keys and per-row statistics of
its mapped layers); ``"materialised"`` computes it from both models' (B, heads, L, L) maps, the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import dist
from .engine import grad_norm, loss_scale
from .config import LossConfig
from .losses import EAGER, LossKernels, LossTerms, distillation_losses
from .teacher import Teacher


def masked_positions(labels: torch.Tensor) -> torch.Tensor:
    """(M,) flat indices of the positions whose label is not -100."""
    return (labels.reshape(-1) != -100).nonzero().squeeze(1)


def distillation_forward(
    student: nn.Module,
    teacher: Teacher,
    batch: dict[str, torch.Tensor],
    loss: LossConfig,
    num_tokens: float | None = None,
    num_masked: float | None = None,
    kernels: LossKernels = EAGER,
) -> LossTerms:
    """``student``: a MiniAlbertForMaskedLM (or an engine wrapping one); ``batch``: input_ids, attention_mask,
    token_type_ids, labels (B, L); ``loss``: the run config's loss section (mode, weights, temperature, and
    ``attention_kl``: "fused", no attention maps, or "materialised", the reference). ``num_tokens`` /
    ``num_masked`` / ``kernels``: see ``distillation_losses``."""
    fused = loss.attention_kl == "fused"
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    positions = masked_positions(batch["labels"])
    # Only what a term reads runs: no MLM head of either model when no term reads its logits.
    student_logits = loss.student_logits_used(teacher.has_mlm_head)
    t_out = teacher(ids, mask, types, logits_positions=positions if loss.teacher_logits_used(teacher.has_mlm_head) else None,
                    output_attentions=not fused, output_query_key=fused)
    s_out = student(
        input_ids=ids, attention_mask=mask, token_type_ids=types, logits_positions=positions,
        output_attentions=not fused, output_hidden_states=True, output_query_key=fused, compute_logits=student_logits,
    )
    return distillation_losses(
        student_hidden=list(s_out.hidden_states[1:]),
        student_attentions=list(s_out.query_keys if fused else s_out.attentions),
        student_logits=s_out.logits,
        teacher_hidden=t_out.hidden_states,
        teacher_attentions=t_out.query_keys if fused else t_out.attentions,
        teacher_logits=t_out.logits,
        attention_mask=mask,
        masked_labels=batch["labels"].reshape(-1).index_select(0, positions),
        weights={"mlm": loss.mlm, "attention": loss.attention, "hidden": loss.hidden, "output": loss.output,
                 "sentence": loss.sentence},
        temperature=loss.temperature,
        mode=loss.mode,
        num_tokens=num_tokens,
        num_masked=num_masked,
        kernels=kernels,
    )


@dataclass
class StepResult:
    record: dict
    """The global batch's mean loss terms (the same on every rank), and lr, grad_norm, loss_scale."""
    per_recursion: dict[str, list[float]]
    tokens: int
    """Real (non-padding) tokens in the global batch."""


def train_step(engine, teacher: Teacher, batches, accum: int, loss: LossConfig, ctx: dist.DistContext,
               kernels: LossKernels = EAGER) -> StepResult:
    """One optimizer step over ``accum`` micro-batches per rank. ``engine``: a DeepSpeed engine (or anything with
    its ``__call__``, ``backward``, ``step``, ``optimizer``, ``get_global_grad_norm`` and ``fp16_enabled``: the
    benchmark's plain-torch one); ``batches``: an iterator of micro-batches on the CPU; ``kernels``: the loss
    terms' implementation (``train.compile``)."""
    lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step applies
    micro = [next(batches) for _ in range(accum)]
    # Means over the whole global batch, however it is split into micro-batches and ranks: each micro-batch
    # divides by the global counts over (accumulation x world), the engine averages the rest.
    counts = torch.tensor([float(sum(int(b["attention_mask"].sum()) for b in micro)),
                           float(sum(int((b["labels"] != -100).sum()) for b in micro))])
    global_tokens, global_masked = (dist.all_reduce_mean(counts) * ctx.world_size).tolist()
    share = accum * ctx.world_size
    sums = None
    for batch in micro:
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        terms = distillation_forward(engine, teacher, batch, loss, num_tokens=global_tokens / share,
                                     num_masked=max(global_masked, 1) / share, kernels=kernels)
        engine.backward(terms.total)
        engine.step()  # DeepSpeed steps the optimizer at the last micro-batch of the accumulation only
        sums = terms.scalars() if sums is None else sums + terms.scalars()
    record, per_recursion = LossTerms.unpack(dist.all_reduce_mean(sums / accum).tolist())
    record.update(lr=lr, grad_norm=grad_norm(engine), loss_scale=loss_scale(engine))
    return StepResult(record, per_recursion, int(global_tokens))
