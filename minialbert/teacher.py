"""The frozen teacher: load a local BERT-family folder, choose its layers, run only what distillation needs.

The teacher lives outside the DeepSpeed engine: frozen, eval mode, ``no_grad``, in bf16 when the run is. Its
forward reuses the Hugging Face modules' weights but computes only what the losses read: hidden states of the
mapped layers, what the attention term needs of the mapped layers — their attention probabilities (the
materialised reference) or only their query and key heads (``attention_kl.TeacherAttention``, the maps-free
path; every layer then runs through SDPA) — and MLM logits at the masked positions only. Layers after the last
mapped one are skipped when no logits are needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention_kl import TeacherAttention


class TeacherError(ValueError):
    """The teacher folder or the layer mapping is unusable."""


def uniform_layer_map(num_teacher_layers: int, num_recursions: int) -> list[int]:
    """Teacher layer (1-based) for each recursion, evenly spaced and ending at the last layer (12 -> 6: 2, 4, ..., 12)."""
    if num_recursions > num_teacher_layers:
        raise TeacherError(
            f"student.num_recursions={num_recursions} exceeds the teacher's {num_teacher_layers} layers"
        )
    return [round((i + 1) * num_teacher_layers / num_recursions) for i in range(num_recursions)]


@dataclass
class TeacherOutput:
    hidden_states: list[torch.Tensor]
    """One (B, L, H) tensor per recursion: the output of its mapped teacher layer."""
    attentions: list[torch.Tensor]
    """One (B, heads, L, L) probability tensor per recursion (empty when not asked for)."""
    logits: torch.Tensor | None
    """(M, V) at the requested positions, or None (no MLM head / not asked)."""
    query_keys: list[TeacherAttention] = field(default_factory=list)
    """One per recursion when asked for (``output_query_key=True``): the mapped layer's query and key heads."""


class Teacher(nn.Module):
    """A Hugging Face BERT model run layer by layer. ``has_mlm_head`` tells whether logits can be distilled."""

    def __init__(self, hf_model: nn.Module, layer_map: list[int]):
        super().__init__()
        self.hf = hf_model
        self.bert = getattr(hf_model, "bert", hf_model)
        self.config = hf_model.config
        self.layers = self.bert.encoder.layer
        self.mlm_head = hf_model.cls.predictions if hasattr(hf_model, "cls") else None
        n = len(self.layers)
        if any(not 1 <= m <= n for m in layer_map) or list(layer_map) != sorted(set(layer_map)):
            raise TeacherError(f"teacher.layer_map={layer_map}: expected increasing layers in 1..{n}")
        self.layer_map = list(layer_map)
        self.num_heads = self.config.num_attention_heads
        self.requires_grad_(False)
        self.eval()

    @property
    def has_mlm_head(self) -> bool:
        return self.mlm_head is not None

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always eval: dropout off (the original left its teacher in train mode)

    def _attention(self, layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor, want_probs: bool,
                   want_query_key: bool = False):
        sa = layer.attention.self
        b, l, h = x.shape
        d = h // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, l, self.num_heads, d).transpose(1, 2)  # (B, heads, L, d)

        q, k, v = heads(sa.query(x)), heads(sa.key(x)), heads(sa.value(x))
        probs = None
        if want_probs:
            scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, heads, L, L)
            scores = scores + (~key_mask).to(scores.dtype) * torch.finfo(scores.dtype).min
            probs = scores.softmax(-1)
            context = probs @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        context = context.transpose(1, 2).reshape(b, l, h)
        out = layer.attention.output
        return out.LayerNorm(out.dense(context) + x), probs, (q, k) if want_query_key else None

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        logits_positions: torch.Tensor | None = None,
        output_attentions: bool = True,
        output_query_key: bool = False,
    ) -> TeacherOutput:
        """``output_attentions``: the mapped layers' maps; ``output_query_key``: their ``TeacherAttention`` (query
        and key heads) instead, and no map of any layer is made."""
        key_mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        x = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        want_logits = logits_positions is not None and self.has_mlm_head
        last = len(self.layers) if want_logits else self.layer_map[-1]
        mapped = set(self.layer_map)
        hidden, attentions, stats = [], [], []
        for i in range(1, last + 1):
            layer = self.layers[i - 1]
            want_probs = output_attentions and not output_query_key and i in mapped
            x, probs, qk = self._attention(layer, x, key_mask, want_probs, output_query_key and i in mapped)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
            if i in mapped:
                hidden.append(x)
                if probs is not None:
                    attentions.append(probs)
                if qk is not None:
                    stats.append(TeacherAttention(*qk))
        logits = None
        if want_logits:
            picked = x.reshape(-1, x.shape[-1]).index_select(0, logits_positions)  # (M, H)
            logits = self.mlm_head(picked)  # (M, V)
        return TeacherOutput(hidden, attentions, logits, stats)


def load_teacher(path: str | Path, num_recursions: int, layer_map: list[int] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Teacher:
    """Load a local Hugging Face BERT-family folder, with its MLM head when it has one."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher.path={str(path)!r}: no config.json there (expected a Hugging Face model folder)")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("bert",):
        raise TeacherError(f"{path / 'config.json'}: model_type={config.model_type!r}, expected a BERT-family model ('bert')")
    has_head = False
    st = path / "model.safetensors"
    if st.is_file():
        with safe_open(str(st), "pt") as f:
            has_head = any(k.startswith("cls.predictions.") for k in f.keys())
    else:
        has_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or []))
    auto = AutoModelForMaskedLM if has_head else AutoModel
    hf = auto.from_pretrained(path, dtype=torch.float32)
    if layer_map is None:
        layer_map = uniform_layer_map(config.num_hidden_layers, num_recursions)
    elif len(layer_map) != num_recursions:
        raise TeacherError(f"teacher.layer_map has {len(layer_map)} entries, expected {num_recursions}")
    return Teacher(hf, layer_map).to(device=device, dtype=dtype)
