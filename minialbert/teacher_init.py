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
from types import SimpleNamespace

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
    act = getattr(t, "hidden_act", None) or getattr(t, "hidden_activation", None)  # ModernBERT: hidden_activation
    if s.hidden_act != act:
        raise TeacherInitError(f"student.init=teacher: the student's hidden_act={s.hidden_act!r} but the "
                               f"teacher's is {act!r}")


@torch.no_grad()
def init_from_teacher(student: MiniAlbertForMaskedLM, teacher_encoder: nn.Module, layer_map: list[int],
                      teacher_model: nn.Module | None = None, token_counts: torch.Tensor | None = None,
                      position_offset: int = 0, shared_layer_from: list[int] | None = None) -> None:
    """Overwrite ``student``'s weights from ``teacher_encoder`` — BERT-shaped (``embeddings``, ``encoder.layer``:
    BERT, RoBERTa, XLM-R, ELECTRA) for a ``bert``-form student, a ModernBERT model (``embeddings``, ``layers``,
    ``final_norm``) for a ``modernbert``-form one — whose layers ``layer_map`` (1-based) the recursions imitate.
    ``teacher_model``: the whole teacher, whose MLM head is copied where it has one (BERT's ``cls.predictions``,
    RoBERTa's ``lm_head``, ModernBERT's ``head`` + ``decoder``); ``token_counts``: (V,) how often each token
    occurs in the training text (the embedding directions then favour the words the student will read; None:
    every word alike); ``position_offset``: the teacher's position row of the first token (RoBERTa:
    padding_idx + 1); ``shared_layer_from``: the teacher layers (1-based) whose mean starts the shared layer
    (None: 1 … the last mapped one)."""
    _check_shapes(student, teacher_encoder.config)
    base = student.minialbert
    source = teacher_encoder.embeddings
    form = student.config.layer_form
    modern = form == "modernbert"
    projection = getattr(teacher_encoder, "embeddings_project", None)  # ELECTRA: E-wide embeddings, then E -> H
    if getattr(source, "embed_proj", None) is not None:  # DeBERTa with E != H: its LayerNorm is after the projection
        raise TeacherInitError("student.init=teacher: the teacher's embeddings are projected before their LayerNorm "
                               "(DeBERTa embedding_size != hidden_size); set student.init=random")
    if projection is not None:
        _copy_projected_embeddings(base, source, projection, position_offset)
    elif modern:
        _init_embeddings(base, source.tok_embeddings.weight, None, None, source.norm, token_counts)
    else:
        target = base.embeddings
        pos = typ = None
        if target.position_embeddings is not None:
            rows = target.position_embeddings.num_embeddings
            pos = source.position_embeddings.weight[position_offset:position_offset + rows]
        if target.token_type_embeddings is not None:
            typ = source.token_type_embeddings.weight[:target.token_type_embeddings.num_embeddings]
        _init_embeddings(base, source.word_embeddings.weight, pos, typ, source.LayerNorm, token_counts)
    # The layers the recursions replace: every teacher layer up to the last mapped one (measured a little closer
    # than the mean of the mapped layers alone; docs/results.md), or the ones asked for.
    teacher_layers = teacher_encoder.layers if modern else teacher_encoder.encoder.layer
    read = {"bert": _bert_parts, "deberta": _deberta_parts, "modernbert": lambda t: _modernbert_parts(t, source.norm)}
    parts = [read[form](t) for t in teacher_layers]
    if shared_layer_from is None:
        chosen = parts[: max(layer_map)]
    else:
        if max(shared_layer_from) > len(teacher_layers):
            raise TeacherInitError(f"student.shared_layer_from={shared_layer_from}: the teacher has "
                                   f"{len(teacher_layers)} layers (numbered from 1)")
        chosen = [parts[i - 1] for i in shared_layer_from]
    units = _init_shared_layer(base.layer, chosen)
    if base.deltas is not None:
        for delta, mapped in zip(base.deltas, layer_map):
            _init_delta(delta, base.layer, parts[mapped - 1], units)
    if modern:
        _copy(base.final_norm, teacher_encoder.final_norm.weight, teacher_encoder.final_norm.bias)
    if form == "deberta":  # the relative embeddings (and their norm) every layer reads
        base.relative_embeddings.weight.copy_(teacher_encoder.encoder.rel_embeddings.weight)
        if base.relative_norm is not None:
            _copy(base.relative_norm, teacher_encoder.encoder.LayerNorm.weight, teacher_encoder.encoder.LayerNorm.bias)
    if base.adapters is not None:
        for i, adapters in enumerate(base.adapters):
            if modern:  # pre-norm: each adapter reads its block's LayerNorm
                attention_input = base.layer.attention.LayerNorm
            else:  # post-norm: what the block's input left, the embeddings' LayerNorm or the shared layer's
                attention_input = source.LayerNorm if i == 0 else base.layer.ffn.LayerNorm
            _init_identity_adapter(adapters.attention, attention_input)
            _init_identity_adapter(adapters.ffn, base.layer.ffn.LayerNorm if modern else base.layer.attention.LayerNorm)
    head_parts = _mlm_head_parts(teacher_model)
    if head_parts is not None:
        dense, norm, decoder, bias = head_parts
        head = student.mlm_head
        _copy(head.transform, dense.weight, dense.bias)
        _copy(head.LayerNorm, norm.weight, norm.bias)
        _copy(head.decoder, decoder.weight, bias)


def _copy(target: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """weight and bias into ``target`` (a teacher without that bias: zero; a target without bias: weight only)."""
    target.weight.copy_(weight)
    if target.bias is not None:
        target.bias.copy_(torch.zeros_like(target.bias) if bias is None else bias)


def _mlm_head_parts(model: nn.Module | None):
    """(dense, LayerNorm, decoder, bias) of a BERT (``cls.predictions``), RoBERTa (``lm_head``) or ModernBERT
    (``head``, ``decoder``) MLM head, all dense -> GELU -> LayerNorm -> decoder like the student's; None for a
    model without one."""
    bert = getattr(getattr(model, "cls", None), "predictions", None)
    if bert is not None:
        return bert.transform.dense, bert.transform.LayerNorm, bert.decoder, bert.bias
    roberta = getattr(model, "lm_head", None)
    if roberta is not None and hasattr(roberta, "layer_norm"):
        return roberta.dense, roberta.layer_norm, roberta.decoder, roberta.bias
    deberta = getattr(getattr(model, "lm_predictions", None), "lm_head", None)  # DeBERTa's own layout: tied decoder
    if deberta is not None:
        decoder = SimpleNamespace(weight=model.deberta.embeddings.word_embeddings.weight)
        return deberta.dense, deberta.LayerNorm, decoder, deberta.bias
    modern = getattr(model, "head", None)  # ModernBERT: dense -> act -> norm (no biases by default), decoder
    if modern is not None and hasattr(model, "decoder") and hasattr(modern, "norm"):
        return modern.dense, modern.norm, model.decoder, model.decoder.bias
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


def _init_embeddings(base: nn.Module, word: torch.Tensor, pos: torch.Tensor | None, typ: torch.Tensor | None,
                     norm: nn.LayerNorm, token_counts: torch.Tensor | None) -> None:
    """The factorised embeddings from the teacher's tables (the rows the student uses; ``pos`` / ``typ`` None for
    a teacher without them, ModernBERT) and its embedding LayerNorm (see the module docstring)."""
    target = base.embeddings
    tables = {"word_embeddings": _fp32(word), "position_embeddings": pos, "token_type_embeddings": typ}
    tables = {k: _fp32(v) for k, v in tables.items() if v is not None}
    gamma = _fp32(norm.weight)
    beta = torch.zeros_like(gamma) if norm.bias is None else _fp32(norm.bias)
    h, e = gamma.shape[0], target.word_embeddings.embedding_dim
    if base.embedding_projection is None:  # E = H: the teacher's embeddings as they are
        for name, src in tables.items():
            getattr(target, name).weight.copy_(src)
        _copy(target.LayerNorm, gamma, beta)
        return
    basis = embedding_basis(tables["word_embeddings"], tables.get("position_embeddings"),
                            tables.get("token_type_embeddings"), token_counts, e)
    reflect = _householder_to_ones(e)  # (E, E), symmetric: the weakest direction onto the all-ones axis
    for name, table in tables.items():
        getattr(target, name).weight.copy_((table - table.mean(dim=1, keepdim=True)) @ basis.T @ reflect)  # (rows, E)
    target.LayerNorm.weight.fill_(1.0)
    if target.LayerNorm.bias is not None:
        target.LayerNorm.bias.zero_()
    # LN_E(c) = c·√E/‖c‖ for coordinates c with no weight on the all-ones axis; the teacher's LN gives
    # γ ⊙ x·√H/‖x‖ + β for the centred sum x ≈ basisᵀ c, so the projection is γ ⊙ basisᵀ·√(H/E), bias β.
    weight = (gamma[:, None] * (basis.T @ reflect)) * math.sqrt(h / e)  # (H, E)
    base.embedding_projection.weight.copy_(weight)
    base.embedding_projection.bias.copy_(beta)


def embedding_basis(word: torch.Tensor, pos: torch.Tensor | None, typ: torch.Tensor | None,
                    token_counts: torch.Tensor | None, e: int) -> torch.Tensor:
    """(E, H), strongest first: the E directions that carry most of what the teacher's embedding LayerNorm sees,
    the top eigenvectors of the second moment of a centred sum word + position + token type, the three drawn
    independently (positions and types uniformly, words by ``token_counts`` with add-one smoothing, or uniformly
    without). Words alone would do for words but lose the positions, which live in other directions."""
    tables = [t - t.mean(dim=1, keepdim=True) for t in (word, pos, typ) if t is not None]  # centred rows, (rows, H)
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
    gamma = _fp32(input_norm.weight)
    beta = torch.zeros_like(gamma) if input_norm.bias is None else _fp32(input_norm.bias)
    adapter.up.weight.zero_()
    adapter.up.bias.zero_()
    adapter.LayerNorm.weight.fill_(float((gamma.square().mean() + beta.var(unbiased=False)).sqrt()))
    adapter.LayerNorm.bias.fill_(float(beta.mean()))


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([_fp32(t) for t in tensors]).mean(0)


Part = tuple[torch.Tensor, torch.Tensor | None]
"""A weight and its bias (None: the teacher has none)."""


def _bert_parts(t: nn.Module) -> dict[str, Part]:
    """A BERT-shaped teacher layer by the student layer's part names (those of ``recursion_parts.RecursionDelta``)."""
    sa = t.attention.self

    def wb(m):
        return m.weight, m.bias

    return {"query": wb(sa.query), "key": wb(sa.key), "value": wb(sa.value), "dense": wb(t.attention.output.dense),
            "attention_norm": wb(t.attention.output.LayerNorm), "ffn": wb(t.intermediate.dense),
            "ffn_output": wb(t.output.dense), "ffn_norm": wb(t.output.LayerNorm)}


def _deberta_parts(t: nn.Module) -> dict[str, Part]:
    """A DeBERTa-v2/v3 layer by the same names (BERT's layout, its projections named ``*_proj``)."""
    sa = t.attention.self

    def wb(m):
        return m.weight, m.bias

    return {"query": wb(sa.query_proj), "key": wb(sa.key_proj), "value": wb(sa.value_proj),
            "dense": wb(t.attention.output.dense), "attention_norm": wb(t.attention.output.LayerNorm),
            "ffn": wb(t.intermediate.dense), "ffn_output": wb(t.output.dense), "ffn_norm": wb(t.output.LayerNorm)}


def _modernbert_parts(t: nn.Module, embeddings_norm: nn.LayerNorm) -> dict[str, Part]:
    """A ModernBERT layer by the same names: the fused Wqkv cut into query, key and value rows; the first layer's
    attention norm is an identity after the embeddings' norm, taken as a LayerNorm with the embeddings' gain and
    bias (exact where that gain is constant and the bias zero, as at initialisation)."""
    h = t.attn.Wo.weight.shape[0]
    w, b = t.attn.Wqkv.weight, t.attn.Wqkv.bias

    def rows(i):
        return w[i * h:(i + 1) * h], None if b is None else b[i * h:(i + 1) * h]

    norm = t.attn_norm if isinstance(t.attn_norm, nn.LayerNorm) else embeddings_norm
    return {"query": rows(0), "key": rows(1), "value": rows(2), "dense": (t.attn.Wo.weight, t.attn.Wo.bias),
            "attention_norm": (norm.weight, norm.bias), "ffn": (t.mlp.Wi.weight, t.mlp.Wi.bias),
            "ffn_output": (t.mlp.Wo.weight, t.mlp.Wo.bias), "ffn_norm": (t.mlp_norm.weight, t.mlp_norm.bias)}


def _student_parts(layer: nn.Module) -> dict[str, nn.Module]:
    a, f = layer.attention, layer.ffn
    return {"query": a.query, "key": a.key, "value": a.value, "dense": a.dense, "attention_norm": a.LayerNorm,
            "ffn": f.ffn, "ffn_output": f.ffn_output, "ffn_norm": f.LayerNorm}


def _bias(part: Part) -> torch.Tensor:
    weight, bias = part
    return torch.zeros(weight.shape[0]) if bias is None else _fp32(bias)


def _narrowed(name: str, weight: torch.Tensor, bias: torch.Tensor, units: torch.Tensor | None, gated: bool,
              width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A part cut to the student's feed-forward units (the input map's rows, for GeGLU in both halves; the output
    map's columns)."""
    if units is None:
        return weight, bias
    if name == "ffn":
        rows = torch.cat([units, units + width]) if gated else units
        return weight[rows], bias[rows]
    if name == "ffn_output":
        return weight[:, units], bias
    return weight, bias


def _init_shared_layer(layer: nn.Module, teacher_parts: list[dict[str, Part]]) -> torch.Tensor | None:
    """The shared layer as the element-wise mean of the teacher layers' parts. Returns the teacher feed-forward
    units kept (None: all of them)."""
    gated, width = layer.ffn.pre_norm, teacher_parts[0]["ffn_output"][0].shape[1]
    keep = layer.ffn.ffn_output.in_features
    units = None
    if keep < width:  # a narrower feed-forward: the units that carry the most, in their original order

        def unit_norms(p):
            w_in = _fp32(p["ffn"][0])
            rows = w_in.view(2, width, -1).norm(dim=(0, 2)) if gated else w_in.norm(dim=1)
            return rows * _fp32(p["ffn_output"][0]).norm(dim=0)

        units = torch.stack([unit_norms(p) for p in teacher_parts]).mean(0).topk(keep).indices.sort().values
    for name, target in _student_parts(layer).items():
        weight = _mean([p[name][0] for p in teacher_parts])
        bias = torch.stack([_bias(p[name]) for p in teacher_parts]).mean(0)
        _copy(target, *_narrowed(name, weight, bias, units, gated, width))
    return units


def _init_delta(delta: nn.Module, layer: nn.Module, teacher_parts: dict[str, Part], units: torch.Tensor | None
                ) -> None:
    """``delta`` such that the shared ``layer`` plus it is the teacher layer as far as its rank allows: biases and
    LayerNorms exactly, each weight matrix's difference by its truncated SVD (√S to each factor)."""
    gated, width = layer.ffn.pre_norm, teacher_parts["ffn_output"][0].shape[1]
    for name, shared in _student_parts(layer).items():
        part = getattr(delta, name)
        weight, bias = _narrowed(name, _fp32(teacher_parts[name][0]), _bias(teacher_parts[name]), units, gated, width)
        if part.bias is not None:
            part.bias.copy_(bias - _fp32(shared.bias))
        difference = weight - _fp32(shared.weight)
        if difference.ndim == 1:  # a LayerNorm's gain
            part.weight.copy_(difference)
            continue
        rank = part.down.shape[0]
        u, s, vh = torch.linalg.svd(difference, full_matrices=False)
        root = s[:rank].sqrt()
        part.up.copy_(u[:, :rank] * root)
        part.down.copy_(root[:, None] * vh[:rank])
