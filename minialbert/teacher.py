"""The frozen teacher: load a local encoder folder of any family, choose its layers, run only what distillation
needs.

The teacher lives outside the DeepSpeed engine: frozen, eval mode, ``no_grad``, in bf16 when the run is. How a
family is reached (its layers, attention, MLM head) is one entry of ``teacher_families.FAMILIES``. Families with
BERT-shaped or ModernBERT layers run layer by layer over the Hugging Face modules' weights and compute only what
the losses read: hidden states of the mapped layers, what the attention term needs of the mapped layers — their
attention probabilities (the materialised reference) or only their query and key heads
(``attention_kl.TeacherAttention``, the maps-free path; every layer then runs through SDPA) — and MLM logits at
the masked positions only; layers after the last mapped one are skipped when no logits are needed. Other
families (DeBERTa, any other encoder) run the model's own forward and hand over its attention probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention_kl import TeacherAttention
from .teacher_families import (GENERIC, Family, TeacherError, accepted, family_of, is_encoder_only, layer_map_for,
                               uniform_layer_map, uses_token_types)

__all__ = ["Teacher", "TeacherError", "TeacherOutput", "TeacherShape", "describe_family", "has_mlm_head",
           "load_teacher", "load_weights", "read_teacher", "uniform_layer_map", "window_mask"]


@dataclass
class TeacherOutput:
    hidden_states: list[torch.Tensor]
    """One (B, L, H) tensor per recursion: the output of its mapped teacher layer."""
    attentions: list[torch.Tensor]
    """One (B, heads, L, L) probability tensor per recursion (empty when not asked for)."""
    logits: torch.Tensor | None
    """(M, V) at the requested positions, or None (no MLM head / not asked)."""
    query_keys: list[TeacherAttention] = field(default_factory=list)
    """One per recursion when asked for (``output_query_key=True``): the mapped layer's query and key heads (or,
    for a family whose attention is no QKᵀ softmax, its probabilities)."""


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, l, h = t.shape
    return t.view(b, l, num_heads, h // num_heads).transpose(1, 2)  # (B, heads, L, d)


def _attend(q, k, v, allowed: torch.Tensor, want_probs: bool):
    """softmax(q kᵀ/√d) v over the ``allowed`` keys ((B, 1, 1|L, L) bool); the probabilities too when asked."""
    if not want_probs:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), None
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, L, L)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1)
    return probs @ v, probs


def window_mask(seq: int, window: int, device) -> torch.Tensor:
    """(L, L) bool: |i - j| <= window, ModernBERT's local attention (window = local_attention // 2)."""
    pos = torch.arange(seq, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window


class Teacher(nn.Module):
    """A Hugging Face encoder of one of ``teacher_families.FAMILIES`` (or a generic one). ``has_mlm_head`` tells
    whether logits can be distilled."""

    def __init__(self, hf_model: nn.Module, layer_map: list[int], family: Family | None = None):
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        self.family = family or family_of(self.config)
        base = self.family.base
        self.base = getattr(hf_model, base) if base and hasattr(hf_model, base) else hf_model
        runner = self.family.runner
        # The layers run one by one (None where the model's own forward runs them).
        self.layers = (self.base.encoder.layer if runner == "bert" else self.base.layers if runner == "modernbert"
                       else None)
        self.num_layers = self.config.num_hidden_layers
        # A masked-LM class wraps its encoder (hf.roberta); a bare encoder (AutoModel) is its own base.
        self.has_mlm_head = self.family.logits is not None and hf_model is not self.base
        self.layer_map = list(layer_map)  # checked by teacher_families.layer_map_for
        self.num_heads = self.config.num_attention_heads
        # The layer loop of this family; ``compiled.compile_teacher`` may put a compiled one in its place.
        self.run_layers = {"bert": self._run_bert, "modernbert": self._run_modernbert,
                           "outputs": self._run_outputs}[self.family.runner]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always eval: dropout off (the original left its teacher in train mode)

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
        and key heads) instead, and no map of any layer is made (where the family allows)."""
        if not uses_token_types(self.config):
            token_type_ids = None  # RoBERTa's single type, ModernBERT's none: the teacher's own default
        want_logits = logits_positions is not None and self.has_mlm_head
        x, out = self.run_layers(input_ids, attention_mask, token_type_ids, want_logits,
                                 output_attentions and not output_query_key, output_query_key)
        if want_logits:
            picked = x.reshape(-1, x.shape[-1]).index_select(0, logits_positions)  # (M, H)
            out.logits = self.family.logits(self.hf, picked)  # (M, V)
        return out

    def _keep(self, out: TeacherOutput, i: int, x, probs, qk: TeacherAttention | None) -> None:
        if i in self.layer_map:
            out.hidden_states.append(x)
            if probs is not None:
                out.attentions.append(probs)
            if qk is not None:
                out.query_keys.append(qk)

    def _run_bert(self, input_ids, attention_mask, token_type_ids, want_logits, want_probs, want_qk):
        """BERT, RoBERTa, XLM-R, ELECTRA: post-norm layers, attention softmax(QKᵀ/√d + mask)."""
        allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        x = self.base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # RoBERTa: its own positions
        if getattr(self.base, "embeddings_project", None) is not None:  # ELECTRA: embedding width E -> H
            x = self.base.embeddings_project(x)
        out = TeacherOutput([], [], None)
        last = self.num_layers if want_logits else self.layer_map[-1]
        for i in range(1, last + 1):
            layer, mapped = self.layers[i - 1], i in self.layer_map
            sa = layer.attention.self
            q, k, v = (_heads(p(x), self.num_heads) for p in (sa.query, sa.key, sa.value))
            context, probs = _attend(q, k, v, allowed, want_probs and mapped)
            attn = layer.attention.output
            x = attn.LayerNorm(attn.dense(context.transpose(1, 2).flatten(2)) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
            self._keep(out, i, x, probs, TeacherAttention(q, k) if want_qk and mapped else None)
        return x, out

    def _run_modernbert(self, input_ids, attention_mask, token_type_ids, want_logits, want_probs, want_qk):
        """ModernBERT: pre-norm layers, rotary queries and keys, global or sliding-window attention by layer."""
        from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

        b, seq = input_ids.shape
        keys = attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        x = self.base.embeddings(input_ids=input_ids)
        positions = torch.arange(seq, device=input_ids.device)[None]
        rotary = {t: self.base.rotary_emb(x, positions, t) for t in set(self.config.layer_types)}
        window = self.config.sliding_window  # |i - j| <= local_attention // 2
        band = window_mask(seq, window, x.device)
        out = TeacherOutput([], [], None)
        last = self.num_layers if want_logits else self.layer_map[-1]
        for i in range(1, last + 1):
            layer, mapped = self.layers[i - 1], i in self.layer_map
            local = layer.attention_type == "sliding_attention"
            qkv = layer.attn.Wqkv(layer.attn_norm(x)).view(b, seq, 3, self.num_heads, -1)
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, heads, L, d)
            q, k = apply_rotary_pos_emb(q, k, *rotary[layer.attention_type])
            context, probs = _attend(q, k, v, keys & band if local else keys, want_probs and mapped)
            x = x + layer.attn.Wo(context.transpose(1, 2).flatten(2))
            x = x + layer.mlp(layer.mlp_norm(x))
            qk = TeacherAttention(q, k, window=window if local else None) if want_qk and mapped else None
            # The last mapped layer's output through the final norm, as Hugging Face reports the last layer's
            # (last_hidden_state) and as a student ends (the modernbert form's final norm, the bert form's LayerNorm).
            self._keep(out, i, self.base.final_norm(x) if i == self.layer_map[-1] else x, probs, qk)
        return self.base.final_norm(x), out

    def _run_outputs(self, input_ids, attention_mask, token_type_ids, want_logits, want_probs, want_qk):
        """DeBERTa and generic encoders: the model's own forward, its hidden states and attention probabilities."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        res = self.base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        output_attentions=want_probs or want_qk, return_dict=True, **extra)
        out = TeacherOutput([], [], None)
        for i in self.layer_map:
            probs = res.attentions[i - 1] if want_probs or want_qk else None  # (B, heads, L, L)
            self._keep(out, i, res.hidden_states[i], probs if want_probs else None,
                       TeacherAttention(probs=probs) if want_qk else None)
        return res.last_hidden_state, out


def _checkpoint_keys(path: Path) -> list[str] | None:
    """The tensor names of the folder's model.safetensors (read from its header), None without one."""
    from safetensors import safe_open

    st = Path(path) / "model.safetensors"
    if not st.is_file():
        return None
    with safe_open(str(st), "pt") as f:
        return list(f.keys())


def has_mlm_head(path: Path, config, family: Family) -> bool:
    """Whether the teacher folder holds its family's MLM head (read from the checkpoint's keys, loads nothing)."""
    keys = _checkpoint_keys(path)
    if keys is not None and family.head_prefixes:
        return any(k.startswith(family.head_prefixes) for k in keys)
    # Without safetensors, the saved class tells (BertForPreTraining has the head, ElectraForPreTraining none).
    kinds = ("ForMaskedLM", "BertForPreTraining")
    return family.logits is not None and any(a.endswith(kinds) for a in (config.architectures or []))


@dataclass(frozen=True)
class TeacherShape:
    """What a run knows of its teacher before loading a weight (its folder's ``config.json`` and checkpoint keys):
    the plan, the student's architecture and the FLOPs are worked out from it, the weights loaded after."""
    path: Path
    config: object
    """The teacher's transformers config."""
    family: Family
    has_mlm_head: bool
    layer_map: list[int]
    """The teacher layer (1-based) each recursion distils from."""


def read_teacher(path: str | Path, num_recursions: int, layer_map: list[int] | None = None) -> TeacherShape:
    """A local Hugging Face encoder folder's shape; ``TeacherError`` names the file and what was expected."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher.path={str(path)!r}: no config.json there (expected a Hugging Face model folder)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        raise TeacherError(f"{path / 'config.json'}: not a config transformers knows ({str(e).splitlines()[0]})") from e
    if not is_encoder_only(config):
        raise TeacherError(f"{path / 'config.json'}: model_type={config.model_type!r} is not an encoder "
                           f"(decoder-only or encoder-decoder); accepted families: {accepted()} or another encoder")
    family = family_of(config)
    return TeacherShape(path, config, family, has_mlm_head(path, config, family),
                        layer_map_for(layer_map, config.num_hidden_layers, num_recursions))


def load_weights(shape: TeacherShape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Teacher:
    """The teacher of ``shape``, with its MLM head when it has one."""
    from transformers import AutoModel, AutoModelForMaskedLM

    # The generic path reads attention probabilities from the model's outputs: eager attention makes them.
    kw = {"attn_implementation": "eager"} if shape.family.runner == "outputs" else {}
    if shape.has_mlm_head and any(k.startswith("lm_predictions.") for k in _checkpoint_keys(shape.path) or ()):
        # Microsoft's DeBERTa checkpoints keep the head as lm_predictions.*, which transformers builds only with
        # legacy=False (its default, legacy=True, builds cls.predictions.* and would leave the head random).
        kw["legacy"] = False
    try:
        auto = AutoModelForMaskedLM if shape.has_mlm_head else AutoModel
        hf, info = auto.from_pretrained(shape.path, dtype=torch.float32, output_loading_info=True, **kw)
    except (ValueError, KeyError, OSError) as e:
        raise TeacherError(f"{shape.path}: cannot load model_type={shape.config.model_type!r} "
                           f"({str(e).splitlines()[0]})") from e
    fresh = [k for k in info["missing_keys"] if k.startswith(shape.family.head_prefixes or ("",))]
    if shape.has_mlm_head and fresh:  # a head the logit term would distil from random weights
        raise TeacherError(f"{shape.path}: the MLM head's {fresh[0]} is not in the checkpoint (its head is laid out "
                           f"as transformers does not build it); set loss.output=0 to distil without logits")
    return Teacher(hf, shape.layer_map, shape.family).to(device=device, dtype=dtype)





def load_teacher(path: str | Path, num_recursions: int, layer_map: list[int] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Teacher:
    """Load a local Hugging Face encoder folder, with its MLM head when it has one."""
    return load_weights(read_teacher(path, num_recursions, layer_map), dtype, device)


def describe_family(family: Family, model_type: str) -> str:
    """One line for start-up and ``--check``: the family and its attention path."""
    generic = " (generic path: hidden states and attention maps from the model's outputs)" if family is GENERIC else ""
    return f"teacher family {family.name} (model_type={model_type!r}){generic}; attention term: {family.attention_path}"
