"""How closely a student follows its teacher on held-out text.

Per mapped layer: the cosine of hidden states (mean over real tokens) and the attention-map KL (teacher ||
student, mean over heads and real query tokens). Overall: the cosine of mean-pooled sentence embeddings (the
student's last recursion vs the teacher's last mapped layer; for all-MiniLM-L6-v2 that is its sentence embedding).
"""

from __future__ import annotations

import torch

from .losses import maps_attention_kl
from .teacher import Teacher


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)


@torch.no_grad()
def measure_agreement(student: torch.nn.Module, teacher: Teacher, batches) -> dict:
    """``student``: a MiniAlbert model; ``batches``: dicts with input_ids, attention_mask (masked tokens in
    ``labels`` are restored to the original text first)."""
    student.eval()
    n = len(teacher.layer_map)
    cos_sum, kl_sum, tokens, sent_sum, sentences = torch.zeros(n), torch.zeros(n), 0.0, 0.0, 0
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "labels" in batch:
            ids = torch.where(batch["labels"] != -100, batch["labels"], ids)
        t = teacher(ids, mask, output_attentions=True)
        s = student(ids, mask, output_attentions=True, output_hidden_states=True)
        s_hidden = s.hidden_states[1:]
        real = mask.sum().item()
        for i in range(n):
            sh, th = s_hidden[i].float(), t.hidden_states[i].float()
            cos = torch.nn.functional.cosine_similarity(sh, th, dim=-1)  # (B, L)
            cos_sum[i] += (cos * mask).sum()
            kl_sum[i] += maps_attention_kl(s.attentions[i], t.attentions[i], mask, "default") * real
        tokens += real
        pooled = torch.nn.functional.cosine_similarity(
            _mean_pool(s_hidden[-1].float(), mask), _mean_pool(t.hidden_states[-1].float(), mask), dim=-1)
        sent_sum += pooled.sum().item()
        sentences += ids.shape[0]
    return {
        "teacher_layers": list(teacher.layer_map),
        "hidden_cosine": (cos_sum / tokens).tolist(),
        "attention_kl": (kl_sum / tokens).tolist(),
        "sentence_cosine": sent_sum / sentences,
        "tokens": int(tokens),
    }
