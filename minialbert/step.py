"""One distillation forward: teacher and student on the same batch, then every loss term.

Shared by the training loop and the benchmark. Logits are computed only at the masked positions (flat
indices into B*L, found with ``nonzero``), for teacher and student alike. The attention term is maps-free by
default (``attention_kl="fused"``: the student's attention runs through SDPA and hands its query and key heads to
the loss, the teacher keeps only queries, keys and per-row statistics of its mapped layers); ``"materialised"``
computes it from both models' (B, heads, L, L) maps, the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LossConfig
from .losses import LossTerms, distillation_losses
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
) -> LossTerms:
    """``student``: a MiniAlbertForMaskedLM (or an engine wrapping one); ``batch``: input_ids, attention_mask,
    token_type_ids, labels (B, L); ``loss``: the run config's loss section (mode, weights, temperature, and
    ``attention_kl``: "fused", no attention maps, or "materialised", the reference). ``num_tokens`` /
    ``num_masked``: see ``distillation_losses``."""
    fused = loss.attention_kl == "fused"
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
    positions = masked_positions(batch["labels"])
    t_out = teacher(ids, mask, types, logits_positions=positions if teacher.has_mlm_head else None,
                    output_attentions=not fused, output_query_key=fused)
    s_out = student(
        input_ids=ids, attention_mask=mask, token_type_ids=types, logits_positions=positions,
        output_attentions=not fused, output_hidden_states=True, output_query_key=fused,
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
        weights={"mlm": loss.mlm, "attention": loss.attention, "hidden": loss.hidden, "output": loss.output},
        temperature=loss.temperature,
        mode=loss.mode,
        num_tokens=num_tokens,
        num_masked=num_masked,
    )
