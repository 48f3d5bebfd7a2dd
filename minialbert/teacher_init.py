"""Start a student from its teacher's weights instead of from noise (``student.init: teacher``).

What is copied, and how (the teacher is a BERT-shaped encoder: ``embeddings`` + ``encoder.layer[i]``):

- **Embeddings.** The student's E-wide word table and its E -> H projection come from a truncated SVD of what
  the teacher's embedding LayerNorm sees (each row's mean removed): the top E directions of the second moment
  of word + position + token-type embeddings, words weighted by their frequency in the run's training shards (for words alone that is the SVD of the V x H table; the positions
  matter: all-MiniLM-L6-v2's live in directions that hold 8 % of their energy among the words' top 128). Every
  table is projected onto those E directions. The student's
  E-wide LayerNorm then sees the E coordinates of the teacher's centred sum, and the projection (Vᵀ scaled by
  √(H/E), then the teacher's LayerNorm gain and bias) turns the normalised coordinates back into what the
  teacher's LayerNorm gives. One catch: LayerNorm also subtracts the mean over the E coordinates. A Householder
  reflection puts the weakest of the E directions on the all-ones axis, so that subtraction removes only that
  direction. With E = H there is no projection: the tables and the LayerNorm are copied.
- **The shared layer** is the element-wise mean of the teacher layers the recursions replace (1 … the last one in
  ``teacher.layer_map``), every tensor (attention, feed-forward, both LayerNorms), as relaxed recursive
  transformers (Bae et al., 2025) initialise theirs; or of the layers ``student.shared_layer_from`` names — one
  layer copies it, which fine-tunes far better than a mean of distinct layers (docs/results.md). A narrower student
  feed-forward (``student.intermediate_size`` < the teacher's) keeps the units with the largest mean
  ‖w_in‖·‖w_out‖ over those layers.
- **Recursion deltas** (``student.recursion_delta_rank`` R > 0): recursion i's delta turns the shared layer back
  into its mapped teacher layer as far as rank R allows, as relaxed recursive transformers initialise their LoRA
  deltas: each weight matrix's delta is the truncated rank-R SVD of (teacher layer − shared layer), its biases
  and LayerNorms the exact differences.
- **Adapters** start as the identity, as closely as their LayerNorm allows: the up-projection is zero, and the
  LayerNorm's gain and bias undo the normalisation of an input that left the shared layer's LayerNorm
  (gain γ, bias β): gain √(mean γ² + var β), bias mean β.
- **The MLM head** is the teacher's (transform, LayerNorm, decoder and bias; the decoder is H wide in both
  models) when the teacher has one (BERT's ``cls.predictions``, RoBERTa's ``lm_head``), else it stays random.
- **Families.** BERT, RoBERTa, XLM-R and ELECTRA share BERT's module names; RoBERTa's positions are read from
  row padding_idx + 1 on; ELECTRA's embeddings, already factorised, are copied as they are (same E). DeBERTa and
  ModernBERT layers have other shapes: ``distill.build_student`` says so in one line and starts those students
  from a random init.

Widths that forbid a copy (hidden size, heads, vocabulary, E > H, a wider student feed-forward) raise
``TeacherInitError`` naming the fields. Model code: no DeepSpeed, no ranks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .modeling_minialbert import MiniAlbertForMaskedLM


class TeacherInitError(ValueError):
    """The student's shape does not allow copying the teacher's weights; the message names the fields."""


def _check_shapes(student: MiniAlbertForMaskedLM, teacher_config) -> None:
    s, t = student.config, teacher_config
    for field, sv, tv in (
        ("hidden_size", s.hidden_size, t.hidden_size),
        ("num_attention_heads", s.num_attention_heads, t.num_attention_heads),
        ("vocab_size", s.vocab_size, t.vocab_size),
    ):
        if sv != tv:
            raise TeacherInitError(f"student.init=teacher: student {field}={sv} but the teacher's is {tv}; "
                                   f"set student.{field} to {tv} or student.init=random")
    if s.embedding_size > t.hidden_size:
        raise TeacherInitError(f"student.init=teacher: student.embedding_size={s.embedding_size} exceeds the "
                               f"teacher's hidden_size={t.hidden_size}; choose E <= {t.hidden_size} or "
                               f"student.init=random")
    if s.intermediate_size > t.intermediate_size:
        raise TeacherInitError(f"student.init=teacher: student.intermediate_size={s.intermediate_size} exceeds "
                               f"the teacher's {t.intermediate_size}; choose <= {t.intermediate_size} or "
                               f"student.init=random")
    if s.hidden_act != t.hidden_act:
        raise TeacherInitError(f"student.init=teacher: the student's hidden_act={s.hidden_act!r} but the "
                               f"teacher's is {t.hidden_act!r}")


@torch.no_grad()
def init_from_teacher(student: MiniAlbertForMaskedLM, teacher_encoder: nn.Module, layer_map: list[int],
                      teacher_model: nn.Module | None = None, token_counts: torch.Tensor | None = None,
                      position_offset: int = 0, shared_layer_from: list[int] | None = None) -> None:
    """Overwrite ``student``'s weights from a BERT-shaped ``teacher_encoder`` (``embeddings``, ``encoder.layer``:
    BERT, RoBERTa, XLM-R, ELECTRA) whose layers ``layer_map`` (1-based) the recursions imitate.
    ``teacher_model``: the whole teacher, whose MLM head is copied where it has one (BERT's ``cls.predictions``,
    RoBERTa's ``lm_head``); ``token_counts``: (V,) how often each token occurs in the training text (the
    embedding directions then favour the words the student will read; None: every word alike);
    ``position_offset``: the teacher's position row of the first token (RoBERTa: padding_idx + 1);
    ``shared_layer_from``: the teacher layers (1-based) whose mean starts the shared layer (None: 1 … the last
    mapped one)."""
    _check_shapes(student, teacher_encoder.config)
    base = student.minialbert
    source = teacher_encoder.embeddings
    projection = getattr(teacher_encoder, "embeddings_project", None)  # ELECTRA: E-wide embeddings, then E -> H
    if projection is not None:
        _copy_projected_embeddings(base, source, projection, position_offset)
    else:
        _init_embeddings(base, source, token_counts, position_offset)
    # The layers the recursions replace: every teacher layer up to the last mapped one (measured a little closer
    # than the mean of the mapped layers alone; docs/results.md), or the ones asked for.
    teacher_layers = teacher_encoder.encoder.layer
    if shared_layer_from is None:
        layers = list(teacher_layers[: max(layer_map)])
    else:
        if max(shared_layer_from) > len(teacher_layers):
            raise TeacherInitError(f"student.shared_layer_from={shared_layer_from}: the teacher has "
                                   f"{len(teacher_layers)} layers (numbered from 1)")
        layers = [teacher_layers[i - 1] for i in shared_layer_from]
    units = _init_shared_layer(base.layer, layers)
    if base.deltas is not None:
        for delta, mapped in zip(base.deltas, layer_map):
            _init_delta(delta, base.layer, teacher_layers[mapped - 1], units)
    if base.adapters is not None:
        # What each adapter's input left: the embeddings' LayerNorm (recursion 1) or the shared layer's.
        embeddings_ln = teacher_encoder.embeddings.LayerNorm
        for i, adapters in enumerate(base.adapters):
            _init_identity_adapter(adapters.attention, embeddings_ln if i == 0 else base.layer.ffn.LayerNorm)
            _init_identity_adapter(adapters.ffn, base.layer.attention.LayerNorm)
    parts = _mlm_head_parts(teacher_model)
    if parts is not None:
        dense, norm, decoder, bias = parts
        head = student.mlm_head
        head.transform.load_state_dict(dense.state_dict())
        head.LayerNorm.load_state_dict(norm.state_dict())
        head.decoder.weight.copy_(decoder.weight)
        head.decoder.bias.copy_(bias)


def _mlm_head_parts(model: nn.Module | None):
    """(dense, LayerNorm, decoder, bias) of a BERT (``cls.predictions``) or RoBERTa (``lm_head``) MLM head, both
    dense -> GELU -> LayerNorm -> decoder like the student's; None for a model without one."""
    bert = getattr(getattr(model, "cls", None), "predictions", None)
    if bert is not None:
        return bert.transform.dense, bert.transform.LayerNorm, bert.decoder, bert.bias
    roberta = getattr(model, "lm_head", None)
    if roberta is not None and hasattr(roberta, "layer_norm"):
        return roberta.dense, roberta.layer_norm, roberta.decoder, roberta.bias
    return None


def _copy_projected_embeddings(base: nn.Module, source: nn.Module, projection: nn.Linear, offset: int) -> None:
    """A teacher whose embeddings are already factorised (ELECTRA): copied as they are when E is the same."""
    e_teacher = source.word_embeddings.embedding_dim
    if base.embedding_projection is None or base.embeddings.word_embeddings.embedding_dim != e_teacher:
        raise TeacherInitError(f"student.init=teacher: student.embedding_size="
                               f"{base.embeddings.word_embeddings.embedding_dim} but the teacher's factorised "
                               f"embeddings are {e_teacher} wide; set student.embedding_size={e_teacher} or "
                               f"student.init=random")
    target = base.embeddings
    target.word_embeddings.weight.copy_(source.word_embeddings.weight)
    rows = target.position_embeddings.num_embeddings
    target.position_embeddings.weight.copy_(source.position_embeddings.weight[offset:offset + rows])
    types = target.token_type_embeddings.num_embeddings
    target.token_type_embeddings.weight.copy_(source.token_type_embeddings.weight[:types])
    target.LayerNorm.load_state_dict(source.LayerNorm.state_dict())
    base.embedding_projection.load_state_dict(projection.state_dict())


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32)


def _init_embeddings(base: nn.Module, source: nn.Module, token_counts: torch.Tensor | None, offset: int) -> None:
    """The factorised embeddings from the teacher's (see the module docstring)."""
    target = base.embeddings
    rows = target.position_embeddings.num_embeddings
    word = _fp32(source.word_embeddings.weight)
    pos = _fp32(source.position_embeddings.weight)[offset:offset + rows]  # the rows the student's positions use
    typ = _fp32(source.token_type_embeddings.weight)[: target.token_type_embeddings.num_embeddings]
    gamma, beta = _fp32(source.LayerNorm.weight), _fp32(source.LayerNorm.bias)
    h, e = word.shape[1], target.word_embeddings.embedding_dim
    if base.embedding_projection is None:  # E = H: the teacher's embeddings as they are
        for name, src in (("word_embeddings", word), ("position_embeddings", pos), ("token_type_embeddings", typ)):
            getattr(target, name).weight.copy_(src)
        target.LayerNorm.weight.copy_(gamma)
        target.LayerNorm.bias.copy_(beta)
        return
    basis = embedding_basis(word, pos, typ, token_counts, e)
    reflect = _householder_to_ones(e)  # (E, E), symmetric: the weakest direction onto the all-ones axis

    def coords(table: torch.Tensor) -> torch.Tensor:
        return (table - table.mean(dim=1, keepdim=True)) @ basis.T @ reflect  # (rows, E)

    target.word_embeddings.weight.copy_(coords(word))
    target.position_embeddings.weight.copy_(coords(pos))
    target.token_type_embeddings.weight.copy_(coords(typ))
    target.LayerNorm.weight.fill_(1.0)
    target.LayerNorm.bias.zero_()
    # LN_E(c) = c·√E/‖c‖ for coordinates c with no weight on the all-ones axis; the teacher's LN gives
    # γ ⊙ x·√H/‖x‖ + β for the centred sum x ≈ basisᵀ c, so the projection is γ ⊙ basisᵀ·√(H/E), bias β.
    weight = (gamma[:, None] * (basis.T @ reflect)) * math.sqrt(h / e)  # (H, E)
    base.embedding_projection.weight.copy_(weight)
    base.embedding_projection.bias.copy_(beta)


def embedding_basis(word: torch.Tensor, pos: torch.Tensor, typ: torch.Tensor, token_counts: torch.Tensor | None,
                    e: int) -> torch.Tensor:
    """(E, H), strongest first: the E directions that carry most of what the teacher's embedding LayerNorm sees,
    the top eigenvectors of the second moment of a centred sum word + position + token type, the three drawn
    independently (positions and types uniformly, words by ``token_counts`` with add-one smoothing, or uniformly
    without). Words alone would do for words but lose the positions, which live in other directions."""
    tables = [t - t.mean(dim=1, keepdim=True) for t in (word, pos, typ)]  # centred rows, (rows, H) each
    row_weights = [torch.full((len(t),), 1.0 / len(t)) for t in tables]
    if token_counts is not None:  # add-one smoothing: words absent from the text still count a little
        counts = token_counts.to(torch.float64)[: len(word)] + 1.0
        row_weights[0] = (counts / counts.sum()).to(torch.float32)
    means = [w @ t for w, t in zip(row_weights, tables)]
    moment = sum(t.T @ (w[:, None] * t) for w, t in zip(row_weights, tables))  # (H, H)
    for i, a in enumerate(means):
        for b in means[i + 1:]:
            moment = moment + torch.outer(a, b) + torch.outer(b, a)
    _, vectors = torch.linalg.eigh(moment)  # ascending
    return vectors[:, -e:].flip(1).T


def _householder_to_ones(e: int) -> torch.Tensor:
    """An orthogonal, symmetric E x E matrix that swaps the last axis and the all-ones direction."""
    last = torch.zeros(e)
    last[-1] = 1.0
    ones = torch.full((e,), 1.0 / math.sqrt(e))
    v = last - ones
    if v.norm() < 1e-12:  # E = 1
        return torch.eye(e)
    v = v / v.norm()
    return torch.eye(e) - 2.0 * torch.outer(v, v)


def _init_identity_adapter(adapter: nn.Module, input_norm: nn.LayerNorm) -> None:
    """LN(x + up(gelu(down x))) ≈ x for x = γ ⊙ n + β (n: a normalised vector): up = 0, and the LayerNorm's gain
    and bias give back x's spread and offset (x's mean ≈ mean β, its spread ≈ √(mean γ² + var β))."""
    gamma, beta = _fp32(input_norm.weight), _fp32(input_norm.bias)
    adapter.up.weight.zero_()
    adapter.up.bias.zero_()
    adapter.LayerNorm.weight.fill_(float((gamma.square().mean() + beta.var(unbiased=False)).sqrt()))
    adapter.LayerNorm.bias.fill_(float(beta.mean()))


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([_fp32(t) for t in tensors]).mean(0)


def _same_width_parts(layer: nn.Module, teacher_layer: nn.Module) -> dict[nn.Module, nn.Module]:
    """The student's shared-layer modules (attention and LayerNorms) and the teacher layer's (BERT names) that
    have the same shapes."""
    return {
        layer.attention.query: teacher_layer.attention.self.query,
        layer.attention.key: teacher_layer.attention.self.key,
        layer.attention.value: teacher_layer.attention.self.value,
        layer.attention.dense: teacher_layer.attention.output.dense,
        layer.attention.LayerNorm: teacher_layer.attention.output.LayerNorm,
        layer.ffn.LayerNorm: teacher_layer.output.LayerNorm,
    }


def _init_shared_layer(layer: nn.Module, teacher_layers: list[nn.Module]) -> torch.Tensor | None:
    """The shared layer as the mean of ``teacher_layers`` (BERT module names on the teacher side). Returns the
    teacher feed-forward units kept (None: all of them)."""
    parts = [_same_width_parts(layer, t) for t in teacher_layers]
    for target in parts[0]:
        target.weight.copy_(_mean([p[target].weight for p in parts]))
        target.bias.copy_(_mean([p[target].bias for p in parts]))
    w_in = _mean([t.intermediate.dense.weight for t in teacher_layers])  # (I, H)
    b_in = _mean([t.intermediate.dense.bias for t in teacher_layers])  # (I,)
    w_out = _mean([t.output.dense.weight for t in teacher_layers])  # (H, I)
    keep = layer.ffn.ffn.out_features
    units = None
    if keep < w_in.shape[0]:  # a narrower feed-forward: the units that carry the most, in their original order
        score = torch.stack([_fp32(t.intermediate.dense.weight).norm(dim=1) * _fp32(t.output.dense.weight).norm(dim=0)
                             for t in teacher_layers]).mean(0)
        units = score.topk(keep).indices.sort().values
        w_in, b_in, w_out = w_in[units], b_in[units], w_out[:, units]
    layer.ffn.ffn.weight.copy_(w_in)
    layer.ffn.ffn.bias.copy_(b_in)
    layer.ffn.ffn_output.weight.copy_(w_out)
    layer.ffn.ffn_output.bias.copy_(_mean([t.output.dense.bias for t in teacher_layers]))
    return units


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return module.weight, module.bias


def _init_delta(delta: nn.Module, layer: nn.Module, teacher_layer: nn.Module, units: torch.Tensor | None) -> None:
    """``delta`` such that the shared ``layer`` plus it is ``teacher_layer`` as far as its rank allows: biases and
    LayerNorms exactly, each weight matrix's difference by its truncated SVD (√S to each factor)."""
    t = teacher_layer
    w_in, b_in = _fp32(t.intermediate.dense.weight), _fp32(t.intermediate.dense.bias)
    w_out = _fp32(t.output.dense.weight)
    if units is not None:  # the narrower student feed-forward's units
        w_in, b_in, w_out = w_in[units], b_in[units], w_out[:, units]
    attention = layer.attention
    targets = [  # (the delta's part, the shared module, the teacher's weight and bias)
        (delta.query, attention.query, *_weight_and_bias(t.attention.self.query)),
        (delta.key, attention.key, *_weight_and_bias(t.attention.self.key)),
        (delta.value, attention.value, *_weight_and_bias(t.attention.self.value)),
        (delta.dense, attention.dense, *_weight_and_bias(t.attention.output.dense)),
        (delta.ffn, layer.ffn.ffn, w_in, b_in),
        (delta.ffn_output, layer.ffn.ffn_output, w_out, t.output.dense.bias),
        (delta.attention_norm, attention.LayerNorm, *_weight_and_bias(t.attention.output.LayerNorm)),
        (delta.ffn_norm, layer.ffn.LayerNorm, *_weight_and_bias(t.output.LayerNorm)),
    ]
    for part, shared, weight, bias in targets:
        part.bias.copy_(_fp32(bias) - _fp32(shared.bias))
        difference = _fp32(weight) - _fp32(shared.weight)
        if difference.ndim == 1:  # a LayerNorm's gain
            part.weight.copy_(difference)
            continue
        rank = part.down.shape[0]
        u, s, vh = torch.linalg.svd(difference, full_matrices=False)
        root = s[:rank].sqrt()
        part.up.copy_(u[:, :rank] * root)
        part.down.copy_(root[:, None] * vh[:rank])
