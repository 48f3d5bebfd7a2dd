"""The recursive MiniALBERT student: embeddings, the one shared layer applied N times, and its heads.

One ALBERT-style post-LayerNorm transformer layer (self-attention block + feed-forward block) is applied
``num_recursions`` times with shared weights. Token embeddings have their own width E and are projected to the
hidden width H when E != H. Optionally each recursion i owns two bottleneck adapters (H -> H/r -> H, GELU,
residual, LayerNorm): one transforms the input of the shared attention block, one the input of the shared
feed-forward block. Recursion i computes, for input x:

    a = attention_block(adapter_att[i](x))      # LN(h + Wo·MHA(h)),  h = adapter_att[i](x)
    x = ffn_block(adapter_ffn[i](a))            # LN(g + W2·act(W1·g)), g = adapter_ffn[i](a)

which is exactly the forward of the original MiniALBERT code (nlpie-research/MiniALBERT); ``minialbert.convert``
imports its checkpoints. With ``recursion_delta_rank`` R > 0, recursion i runs the shared weights plus its own
delta (relaxed recursive transformers, Bae et al. 2025): W + up_i·down_i (rank R) for every weight matrix, and its
own additive change to every bias and LayerNorm; the deltas start at zero (both per-recursion parts are in
``recursion_parts.py``). That is the ``bert`` layer form; ``layer_form`` "modernbert" (pre-norm, GeGLU, rotary,
local windows) and "deberta" (disentangled relative attention) mirror those teachers' layers, their positions in
``positions.py``. Adapter tuning (freeze, save, load) is ``adapter_tuning.py``. Nothing here knows about
distillation, DeepSpeed or ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .blockwise_attention import blockwise_attention
from .adapter_tuning import AdapterTuning
from .positions import disentangled_scores, recursion_positions, relative_indices, rotate
from .dropout import Dropout
from .recomputed import recomputed_activation
from .recursion_parts import LowRankDelta, NormDelta, RecursionAdapters, RecursionDelta
from .configuration_minialbert import MiniAlbertConfig

logger = logging.get_logger(__name__)



@dataclass
class MiniAlbertModelOutput(BaseModelOutput):
    query_keys: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    """Per recursion, the attention's (query, key) heads, each (B, heads, L, d), when asked for."""


@dataclass
class MiniAlbertMaskedLMOutput(MaskedLMOutput):
    query_keys: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    """Per recursion, the attention's (query, key) heads, each (B, heads, L, d), when asked for."""


class MiniAlbertEmbeddings(nn.Module):
    """Word + position + token-type embeddings of width E, LayerNorm, dropout. The ``modernbert`` form: words only
    (rotary positions, in the attention); ``deberta``: words, token types where it has them, positions only where
    ``absolute_positions`` (relative positions, in the attention)."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        e, form = config.embedding_size, config.layer_form
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        absolute = form == "bert" or (form == "deberta" and config.absolute_positions)
        types = form != "modernbert" and config.type_vocab_size > 0
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e) if absolute else None
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e) if types else None
        self.LayerNorm = nn.LayerNorm(e, eps=config.layer_norm_eps, bias=config.use_bias)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs_embeds``: (B, L, E) word embeddings given instead of ``input_ids``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, E)
        if self.position_embeddings is not None:
            seq_len = x.shape[1]
            if seq_len > self.position_embeddings.num_embeddings:
                raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings="
                                 f"{self.position_embeddings.num_embeddings}")
            if position_ids is None:
                position_ids = torch.arange(seq_len, device=x.device)
            x = x + self.position_embeddings(position_ids)  # (B, L, E)
        if self.token_type_embeddings is not None:
            x = x + (self.token_type_embeddings.weight[0] if token_type_ids is None
                     else self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    key_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float = 1.0, **_: object):
    """Attention with its maps (attn_implementation "eager", and whenever the maps are asked for), in the original
    code's arithmetic: scores + (1 - mask) * finfo.min, softmax, dropout. (B, heads, L, d) in; returns the context
    (B, L, heads, d) and the maps (B, heads, L, L). ``key_mask``: (B, 1, 1, L) bool, True at real keys."""
    scores = query @ key.transpose(-1, -2) * scaling  # (B, heads, L, L)
    if key_mask is not None:
        scores = scores + (~key_mask).to(scores.dtype) * torch.finfo(scores.dtype).min
    probs = scores.softmax(dim=-1)
    context = F.dropout(probs, dropout, module.training) @ value  # (B, heads, L, d)
    return context.transpose(1, 2), probs


BLOCKWISE_BF16_MAX_LEN = 256
"""Up to this many keys, a bf16 CPU training step runs the blockwise kernel, not SDPA's flash kernel: flash's bf16
backward measured 1.4-3x slower at L 128-256 (AMX host; docs/performance.md), faster from L 384."""


def _blockwise_on_cpu(query: torch.Tensor, key: torch.Tensor, dropout: float, key_mask: torch.Tensor | None = None
                      ) -> bool:
    """CPU attention that runs blockwise: with dropout (SDPA has no fused kernel for it; its math path would keep
    fp32 (B, heads, L, L) maps), and bf16 training at short lengths, where flash attention's backward is slow."""
    if query.device.type != "cpu" or (key_mask is not None and key_mask.shape[-2] != 1):
        return False  # a local window's (B, 1, L, L) mask: SDPA
    training_bf16 = query.dtype == torch.bfloat16 and query.requires_grad and torch.is_grad_enabled()
    return dropout > 0 or (training_bf16 and key.shape[-2] <= BLOCKWISE_BF16_MAX_LEN)


def sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   key_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float = 1.0, **_: object):
    """attn_implementation "sdpa" (the default): no maps. On CPU with dropout, and in bf16 training at short
    lengths, the attention runs blockwise instead (``_blockwise_on_cpu``): the same math, no maps kept."""
    if _blockwise_on_cpu(query, key, dropout, key_mask):
        bias = None if key_mask is None else (~key_mask).to(query.dtype) * torch.finfo(query.dtype).min  # (B, 1, 1, L)
        context = blockwise_attention(query, key, value, bias, dropout)
    else:
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout, scale=scaling)
    return context.transpose(1, 2), None


class MiniAlbertAttention(nn.Module):
    """Multi-head self-attention block: post-LN, LN(x + dropout(Wo · MHA(x))) (``bert`` form), or pre-LN with
    rotary queries and keys, x + dropout(Wo · MHA(LN(x))) (``modernbert`` form)."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        self.config = config  # the model's: config._attn_implementation ("eager" / "sdpa") is read at each call
        h, bias = config.hidden_size, config.use_bias
        self.pre_norm = config.layer_form == "modernbert"
        self.num_heads = config.num_attention_heads
        self.head_dim = h // self.num_heads
        self.query = nn.Linear(h, h, bias=bias)
        self.key = nn.Linear(h, h, bias=bias)
        self.value = nn.Linear(h, h, bias=bias)
        self.dense = nn.Linear(h, h, bias=bias)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=bias)
        self.disentangled = config.layer_form == "deberta"
        if self.disentangled:  # DeBERTa scales every score by 1/sqrt(d x (1 + number of relative terms))
            self.pos_att_type = set(config.pos_att_type)
            self.scale = 1 / math.sqrt(self.head_dim * (1 + len(self.pos_att_type)))
            self.position_dropout = Dropout(config.hidden_dropout_prob)
        self.attention_dropout_p = config.attention_probs_dropout_prob
        self.output_dropout = Dropout(config.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, d)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, output_attentions: bool = False,
        output_query_key: bool = False, delta: "RecursionDelta | None" = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None, adapter: nn.Module | None = None,
        window: int | None = None, relative: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple | None]:
        """``key_mask``: (B, 1, 1, L) bool, True where the key is a real token (None: attend everywhere), or
        (B, 1, L, L) for a local recursion (its window in it). ``delta``: the recursion's own change to these
        weights (None: the shared weights alone). ``modernbert`` form: ``rotary`` (cos, sin) turn the queries and
        keys, ``adapter`` transforms the normalised input, ``window`` is the local half-width (None: global).
        ``deberta`` form: ``relative`` = (relative embeddings (2·span, H), content->position and position->content
        indices (L, L)); its maps, not queries and keys, are what ``output_query_key`` returns (its scores are no
        query·key product).

        Returns the block's output, the maps when ``output_attentions`` and the (B, heads, L, d) query and key
        heads when ``output_query_key`` — (query, key), or (query, key, window) for a local recursion: what a
        maps-free attention distillation reads (queries and keys after rotary); attention stays SDPA."""
        if delta is None:
            query, key, value, dense, norm = self.query, self.key, self.value, self.dense, self.LayerNorm
        else:
            query, key, value, dense, norm = delta.attention_block(self)
        h = norm(x) if self.pre_norm else x
        if adapter is not None:
            h = adapter(h)
        q, k, v = self._heads(query(h)), self._heads(key(h)), self._heads(value(h))
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if self.disentangled:
            return self._disentangled(x, q, k, v, key_mask, relative, query, key, dense, norm, output_attentions,
                                      output_query_key)
        dropout_p = self.attention_dropout_p if self.training else 0.0
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = sdpa_attention if implementation == "sdpa" else ALL_ATTENTION_FUNCTIONS.get_interface(
            implementation, eager_attention)
        context, probs = attention(self, q, k, v, key_mask, dropout=dropout_p, scaling=1 / math.sqrt(self.head_dim))
        context = context.flatten(2)  # (B, L, heads, d) -> (B, L, H)
        out = x + self.output_dropout(dense(context))
        if not self.pre_norm:
            out = norm(out)
        query_key = None if not output_query_key else (q, k) if window is None else (q, k, window)
        return out, probs if output_attentions else None, query_key


    def _disentangled(self, x, q, k, v, key_mask, relative, query, key, dense, norm, output_attentions,
                      output_query_key):
        """DeBERTa's attention: softmax((q·kᵀ + c2p + p2c) / sqrt(d x factor) + mask), post-LN block."""
        table, c2p_index, p2c_index = relative
        table = self.position_dropout(table)[None]  # (1, 2·span, H): read through this recursion's own maps
        pos_key = self._heads(key(table))[0] if "c2p" in self.pos_att_type else None  # (heads, 2·span, d)
        pos_query = self._heads(query(table))[0] if "p2c" in self.pos_att_type else None
        bias = disentangled_scores(q, k, pos_query, pos_key, c2p_index, p2c_index) * self.scale
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask, torch.finfo(bias.dtype).min)
        dropout_p = self.attention_dropout_p if self.training else 0.0
        probs = None
        if output_attentions or output_query_key or self.config._attn_implementation == "eager":
            probs = (q @ k.transpose(-1, -2) * self.scale + bias).softmax(-1)  # (B, heads, L, L)
            context = F.dropout(probs, dropout_p, self.training) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p,
                                                     scale=self.scale)
        out = norm(x + self.output_dropout(dense(context.transpose(1, 2).flatten(2))))
        return out, probs if output_attentions else None, probs if output_query_key else None


class MiniAlbertFeedForward(nn.Module):
    """Feed-forward block: post-LN, LN(x + dropout(W2 · act(W1 · x))) (``bert`` form), or pre-LN GeGLU,
    x + dropout(W2 · (act(a) * g)) with (a, g) = W1 · LN(x) (``modernbert`` form)."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        self.pre_norm = config.layer_form == "modernbert"
        h, i, bias = config.hidden_size, config.intermediate_size, config.use_bias
        self.ffn = nn.Linear(h, 2 * i if self.pre_norm else i, bias=bias)
        self.activation = ACT2FN[config.hidden_act]
        self.ffn_output = nn.Linear(i, h, bias=bias)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps, bias=bias)

    def _gated(self, pre: torch.Tensor) -> torch.Tensor:
        a, g = pre.chunk(2, dim=-1)
        return self.activation(a) * g

    def forward(self, x: torch.Tensor, delta: "RecursionDelta | None" = None,
                adapter: nn.Module | None = None) -> torch.Tensor:
        """``adapter`` (``modernbert`` form): transforms the normalised input."""
        ffn, ffn_output, norm = (self.ffn, self.ffn_output, self.LayerNorm) if delta is None else delta.ffn_block(self)
        # act's output is made again in backward, not kept: the largest activation of a step (recomputed.py)
        if not self.pre_norm:
            return norm(x + self.dropout(recomputed_activation(self.activation, ffn(x), ffn_output)))
        h = norm(x)
        if adapter is not None:
            h = adapter(h)
        return x + self.dropout(recomputed_activation(self._gated, ffn(h), ffn_output))


class MiniAlbertLayer(GradientCheckpointingLayer):
    """The one shared transformer layer, applied once per recursion with that recursion's adapters (between the
    blocks). With gradient checkpointing on, each application keeps only its input and is recomputed backward."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        self.pre_norm = config.layer_form == "modernbert"
        self.attention = MiniAlbertAttention(config)
        self.ffn = MiniAlbertFeedForward(config)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, adapters: "RecursionAdapters | None" = None,
                output_attentions: bool = False, output_query_key: bool = False,
                delta: "RecursionDelta | None" = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                window: int | None = None, relative_table: torch.Tensor | None = None,
                relative_index: tuple | None = None):
        """(B, L, H) in; returns (B, L, H), the maps or None, the (query, key) heads or None. The ``bert`` form's
        adapters transform each block's input; the ``modernbert`` form's each block's normalised input."""
        if self.pre_norm:
            att, ffn = (None, None) if adapters is None else (adapters.attention, adapters.ffn)
            x, probs, query_key = self.attention(x, key_mask, output_attentions, output_query_key, delta, rotary,
                                                 att, window)
            return self.ffn(x, delta, ffn), probs, query_key
        if adapters is not None:
            x = adapters.attention(x)
        relative = None if relative_table is None else (relative_table, *relative_index)
        x, probs, query_key = self.attention(x, key_mask, output_attentions, output_query_key, delta,
                                             relative=relative)
        if adapters is not None:
            x = adapters.ffn(x)
        return self.ffn(x, delta), probs, query_key


class MiniAlbertPreTrainedModel(AdapterTuning, PreTrainedModel):
    config_class = MiniAlbertConfig
    config: MiniAlbertConfig
    base_model_prefix = "minialbert"
    supports_gradient_checkpointing = True  # each recursion is checkpointed (MiniAlbertModel.forward)
    _supports_sdpa = True  # attn_implementation "sdpa" (the default) or "eager"; maps always come from eager
    # Names (prefixes of parameter names) of the task head; the head trains with the adapters.
    _head_prefixes: tuple[str, ...] = ()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Hugging Face's init, and recursion deltas that start at zero (down random, up zero: LoRA's start)."""
        if isinstance(module, LowRankDelta):
            init.normal_(module.down, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.up)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, NormDelta):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def _base(self) -> "MiniAlbertModel":
        return self if isinstance(self, MiniAlbertModel) else self.minialbert

    def get_position_embeddings(self) -> nn.Embedding | None:
        """The learned position table (None for the ``modernbert`` form: rotary positions)."""
        return self._base().embeddings.position_embeddings

    @torch.no_grad()
    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        """Longer (or shorter) inputs: keep the first positions' vectors, initialise new ones as at construction."""
        embeddings = self._base().embeddings
        old = embeddings.position_embeddings
        if old is None:  # rotary positions: any length, nothing to resize
            self.config.max_position_embeddings = new_num_position_embeddings
            return
        new = nn.Embedding(new_num_position_embeddings, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(new)
        keep = min(old.num_embeddings, new_num_position_embeddings)
        new.weight[:keep] = old.weight[:keep]
        embeddings.position_embeddings = new
        self.config.max_position_embeddings = new_num_position_embeddings

    def _output_flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The call's choices, or the config's where the call says None."""
        c = self.config
        return (c.output_attentions if output_attentions is None else output_attentions,
                c.output_hidden_states if output_hidden_states is None else output_hidden_states,
                c.return_dict if return_dict is None else return_dict)


class MiniAlbertModel(MiniAlbertPreTrainedModel):
    """Embeddings (+ projection) and the shared layer applied N times, with per-recursion adapters and deltas."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__(config)
        self.embeddings = MiniAlbertEmbeddings(config)
        self.embedding_projection = (
            nn.Linear(config.embedding_size, config.hidden_size) if config.embedding_size != config.hidden_size else None
        )
        self.layer = MiniAlbertLayer(config)
        self.final_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
                           if config.layer_form == "modernbert" else None)
        deberta = config.layer_form == "deberta"  # relative embeddings shared by every recursion (and their norm)
        self.relative_embeddings = nn.Embedding(2 * config.relative_span, config.hidden_size) if deberta else None
        self.relative_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                              if deberta and config.relative_norm else None)
        self.adapters = (
            nn.ModuleList(RecursionAdapters(config) for _ in range(config.num_recursions)) if config.use_adapters else None
        )
        self.deltas = (
            nn.ModuleList(RecursionDelta(config) for _ in range(config.num_recursions))
            if config.recursion_delta_rank else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @torch.no_grad()
    def init_embeddings_from(self, source: nn.Module) -> None:
        """Copy a BERT-family embedding module (word/position/token-type embeddings, LayerNorm) into this one.

        The paper initialises a 312-wide student embedding from TinyBERT's. Shapes must match exactly.
        """
        for name, target in self.embeddings.state_dict().items():
            src = source.state_dict().get(name)
            if src is None or src.shape != target.shape:
                got = None if src is None else tuple(src.shape)
                raise ValueError(f"source embeddings: '{name}' has shape {got}, expected {tuple(target.shape)}")
            target.copy_(src)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_query_key: bool = False,
    ) -> MiniAlbertModelOutput | tuple:
        """``output_attentions`` / ``output_hidden_states`` / ``return_dict``: None takes the config's.
        ``output_query_key``: also return each recursion's (B, heads, L, d) query and key heads."""
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        # Maps are only computed when asked for (or with eager attention); otherwise attention runs through SDPA.
        key_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, L, E)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)  # (B, L, H)
        positional = recursion_positions(self.config, x, key_mask, position_ids)
        table = index = None  # the table a top-level argument: reentrant checkpointing sees it as an input
        if self.relative_embeddings is not None:
            table = self.relative_embeddings.weight
            table = table if self.relative_norm is None else self.relative_norm(table)
            index = relative_indices(x.shape[1], self.config, x.device)
        hidden_states, attentions, query_keys = [x], [], []
        for i in range(self.config.num_recursions):
            adapters = None if self.adapters is None else self.adapters[i]
            delta = None if self.deltas is None else self.deltas[i]
            mask, rotary, window = positional[i] if positional else (key_mask, None, None)
            x, probs, qk = self.layer(x, mask, adapters, output_attentions, output_query_key, delta, rotary, window,
                                      table, index)
            hidden_states.append(x)
            attentions.append(probs)
            query_keys.append(qk)
        if self.final_norm is not None:
            x = self.final_norm(x)
            hidden_states[-1] = x  # the last recursion's state as the teacher's last layer reports it: normalised
        out = MiniAlbertModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            query_keys=tuple(query_keys) if output_query_key else None,
        )
        return out if return_dict else out.to_tuple()


class MiniAlbertMLMHead(nn.Module):
    """transform -> GELU -> LayerNorm -> decoder (untied, as in the original)."""

    def __init__(self, config: MiniAlbertConfig):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(F.gelu(self.transform(x))))


class MiniAlbertForMaskedLM(MiniAlbertPreTrainedModel):
    _head_prefixes = ("mlm_head.",)

    def __init__(self, config: MiniAlbertConfig):
        super().__init__(config)
        self.minialbert = MiniAlbertModel(config)
        self.mlm_head = MiniAlbertMLMHead(config)
        self.post_init()
        if not getattr(config, "mlm_head_trained", True):
            logger.warning("this model's MLM head was never trained (its distillation read no logits): its "
                           "masked-token predictions are noise; use the encoder or fine-tune a task head")

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.decoder  # not tied to the (narrower) word embeddings; resized with them

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.mlm_head.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_query_key: bool = False,
        compute_logits: bool = True,
    ) -> MiniAlbertMaskedLMOutput | tuple:
        """``logits_positions``: optional (M,) flat indices into B*L; then logits are (M, V) for those positions
        only (the masked ones in distillation), never a (B, L, V) tensor, and ``labels`` (B, L) are read there.
        ``output_query_key``: also return each recursion's attention query and key heads (see the attention).
        ``compute_logits=False``: the MLM head does not run (logits None): a distillation whose loss reads no
        logits."""
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        if labels is not None and not compute_logits:
            raise ValueError("labels need logits: compute_logits=False computes none")
        out = self.minialbert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, output_query_key=output_query_key,
        )
        if not compute_logits:
            result = MiniAlbertMaskedLMOutput(logits=None, hidden_states=out.hidden_states, attentions=out.attentions,
                                              query_keys=out.query_keys)
            return result if return_dict else result.to_tuple()
        seq = out.last_hidden_state  # (B, L, H)
        if logits_positions is not None:
            seq = seq.reshape(-1, seq.shape[-1]).index_select(0, logits_positions)  # (M, H)
        logits = self.mlm_head(seq)  # (B, L, V) or (M, V)
        loss = None
        if labels is not None:
            targets = labels.reshape(-1) if logits_positions is None else labels.reshape(-1).index_select(0, logits_positions)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=-100)
        result = MiniAlbertMaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                          attentions=out.attentions, query_keys=out.query_keys)
        return result if return_dict else result.to_tuple()


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, L, H) -> (B, H): the first token's vector ("cls"), or the mean over real tokens ("mean"; all tokens
    without a mask). The sentence-level heads' pooling, and the bi-encoder's (``finetune/similarity.py``)."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class _MiniAlbertWithClassifier(MiniAlbertPreTrainedModel):
    """The encoder plus dropout and a linear task head (``classifier``), shared by the two classification heads."""

    _head_prefixes = ("classifier.",)

    def __init__(self, config: MiniAlbertConfig):
        super().__init__(config)
        self.minialbert = MiniAlbertModel(config)
        p = config.classifier_dropout_prob
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class MiniAlbertForSequenceClassification(_MiniAlbertWithClassifier):
    """The last recursion pooled (``config.classifier_pooling``: [CLS], as the original, or the mean of the real
    tokens) -> dropout -> linear (no pooler)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        out = self.minialbert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(pool_hidden(out.last_hidden_state, attention_mask,
                                                          self.config.classifier_pooling)))  # (B, num_labels)
        loss = None
        if labels is not None:
            problem = self.config.problem_type or (
                "regression"
                if self.config.num_labels == 1
                else "single_label_classification"
                if labels.dtype in (torch.long, torch.int)
                else "multi_label_classification"
            )
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            elif problem == "single_label_classification":
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        result = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                          attentions=out.attentions)
        return result if return_dict else result.to_tuple()


class MiniAlbertForTokenClassification(_MiniAlbertWithClassifier):
    """Every position's hidden state of the last recursion -> dropout -> linear."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> TokenClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        out = self.minialbert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        result = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return result if return_dict else result.to_tuple()
