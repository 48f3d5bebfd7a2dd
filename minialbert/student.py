"""The student a run builds: its architecture from the run config and the teacher (``student_config``; with a saved
student's and the checks against the teacher: ``architecture``), and the model with its initialisation
(``build_student``: from the teacher's weights, a saved student, or random).

Shared by the run (``minialbert/distill.py``), its plan (``--check``) and the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, RunConfig
from .configuration_minialbert import MiniAlbertConfig
from .teacher_families import copy_init_refusal, layer_norm_eps, max_positions, position_offset, student_form

if TYPE_CHECKING:  # the plan (--check) reads student_config without importing torch's training stack
    from .modeling_minialbert import MiniAlbertForMaskedLM
    from .teacher import Teacher, TeacherShape


def student_config(cfg: RunConfig, teacher_config) -> MiniAlbertConfig:
    """The student's architecture: the run config's ``student`` section, the teacher's sizes where it says None."""
    t, s = teacher_config, cfg.student
    # The student's own positions 0..L-1 cover the teacher's usable rows (RoBERTa: 514 - 2); its single token type
    # when the teacher has none (ModernBERT, DeBERTa-v3): the data's all-zero token_type_ids.
    try:
        return _student_config(cfg, t, s)
    except ValueError as err:  # MiniAlbertConfig.validate names the field: a run config's is student.<field>
        raise ConfigError(f"student.{err}") from None


def _student_config(cfg: RunConfig, t, s) -> MiniAlbertConfig:
    form = layer_form(cfg, t)
    fields = dict(
        vocab_size=t.vocab_size, embedding_size=s.embedding_size, hidden_size=s.hidden_size or t.hidden_size,
        num_attention_heads=s.num_attention_heads or t.num_attention_heads,
        intermediate_size=s.intermediate_size or t.intermediate_size, num_recursions=s.num_recursions,
        use_adapters=s.use_adapters, adapter_reduction_factor=s.adapter_reduction_factor,
        recursion_delta_rank=s.recursion_delta_rank,
        hidden_dropout_prob=s.hidden_dropout_prob, attention_probs_dropout_prob=s.attention_probs_dropout_prob,
        max_position_embeddings=max_positions(t), type_vocab_size=max(getattr(t, "type_vocab_size", 0) or 0, 1),
        layer_norm_eps=layer_norm_eps(t), pad_token_id=t.pad_token_id or 0,
        hidden_act=getattr(t, "hidden_act", None) or getattr(t, "hidden_activation", None) or "gelu",
        classifier_pooling=classifier_pooling(cfg), layer_form=form,
    )
    if form == "modernbert":
        fields.update(_modernbert_form(cfg, t))
    elif form == "deberta":
        fields.update(_deberta_form(t))
    return MiniAlbertConfig(**fields)


def layer_form(cfg: RunConfig, teacher_config) -> str:
    """``student.layer_form`` with 'auto' resolved: the form that mirrors the teacher's layers."""
    return student_form(teacher_config) if cfg.student.layer_form == "auto" else cfg.student.layer_form


def _deberta_form(t) -> dict:
    """The ``deberta`` form's settings from a DeBERTa-v2/v3 teacher (defaults for another teacher)."""
    if t.model_type != "deberta-v2":
        return {}
    buckets, max_relative = getattr(t, "position_buckets", -1), getattr(t, "max_relative_positions", -1)
    if max_relative < 1:
        max_relative = t.max_position_embeddings
    return {
        "relative_span": buckets if buckets > 0 else max_relative,
        "max_relative_positions": max_relative if buckets > 0 else -1,
        "pos_att_type": list(t.pos_att_type or []),
        "relative_norm": "layer_norm" in str(getattr(t, "norm_rel_ebd", "none")).lower(),
        "absolute_positions": bool(getattr(t, "position_biased_input", True)),
        "type_vocab_size": t.type_vocab_size,  # v3: 0, no token-type table
    }


def _modernbert_form(cfg: RunConfig, t) -> dict:
    """The ``modernbert`` form's settings from a ModernBERT teacher (defaults for another teacher): rotary bases,
    the local window, which recursions attend locally (those mapped to its sliding-window layers), biases."""
    from .teacher_families import layer_map_for

    if t.model_type != "modernbert":
        return {"use_bias": False}
    rope = getattr(t, "rope_parameters", None) or {}
    layer_map = layer_map_for(cfg.teacher.layer_map, t.num_hidden_layers, cfg.student.num_recursions)
    return {
        "use_bias": bool(t.attention_bias or t.mlp_bias or t.norm_bias),
        "rope_theta": (rope.get("full_attention") or {}).get("rope_theta", getattr(t, "global_rope_theta", 160000.0)),
        "local_rope_theta": (rope.get("sliding_attention") or {}).get("rope_theta",
                                                                       getattr(t, "local_rope_theta", 10000.0)),
        "local_window": t.sliding_window,  # |i - j| <= local_attention // 2, as the teacher runs it
        "local_recursions": [i for i, m in enumerate(layer_map) if t.layer_types[m - 1] == "sliding_attention"],
    }


def classifier_pooling(cfg: RunConfig) -> str:
    """``student.classifier_pooling``, with 'auto' resolved: the teacher's sentence-transformers pooling when it
    is one the student's heads have ('mean', 'cls'), else 'cls'."""
    if cfg.student.classifier_pooling != "auto":
        return cfg.student.classifier_pooling
    from .sentence_transformers_files import teacher_pooling

    pooling = teacher_pooling(Path(cfg.teacher_path()))
    return pooling if pooling in ("mean", "cls") else "cls"


def architecture(cfg: RunConfig, teacher: Teacher | TeacherShape) -> MiniAlbertConfig:
    """The architecture the run trains: a saved student's (``student.init_from``) or ``student_config``'s, checked
    against the teacher where the losses compare them one to one; errors name the field."""
    s, t = cfg.student, teacher.config
    if s.init_from and not (Path(s.init_from) / "config.json").is_file():
        raise ConfigError(f"student.init_from={s.init_from!r}: no config.json there (expected a saved student)")
    c = MiniAlbertConfig.from_pretrained(s.init_from) if s.init_from else student_config(cfg, t)
    for field, student_value, teacher_value in (
        ("hidden_size", c.hidden_size, t.hidden_size),
        ("num_attention_heads", c.num_attention_heads, t.num_attention_heads),
        ("vocab_size", c.vocab_size, t.vocab_size),
        ("num_recursions", c.num_recursions, len(teacher.layer_map)),
    ):
        if student_value != teacher_value:
            raise ConfigError(f"student.{field}={student_value} but the teacher needs {teacher_value} "
                              f"(hidden-state and attention losses compare them one to one)")
    return c


def build_student(cfg: RunConfig, teacher: Teacher, config: MiniAlbertConfig | None = None) -> MiniAlbertForMaskedLM:
    """The student of ``config`` (default: ``architecture``) with its initialisation: a saved student's weights,
    the teacher's, or random."""
    import torch

    from . import dist
    from .modeling_minialbert import MiniAlbertForMaskedLM

    s = cfg.student
    config = config or architecture(cfg, teacher)
    model = MiniAlbertForMaskedLM.from_pretrained(s.init_from) if s.init_from else MiniAlbertForMaskedLM(config)
    t = teacher.config
    refusal = copy_init_refusal(t, model.config.layer_form)
    if s.init == "teacher" and not s.init_from and refusal:
        dist.print0(f"{refusal}: the student starts from a random init")
    elif s.init == "teacher" and not s.init_from:
        from .data import token_counts
        from .teacher_init import TeacherInitError, init_from_teacher

        try:
            counts = torch.from_numpy(token_counts([src.path for src in cfg.data.sources], t.vocab_size))
            init_from_teacher(model, teacher.base, teacher.layer_map, teacher.hf, counts, position_offset(t),
                              cfg.student.shared_layer_from)
        except TeacherInitError as err:
            raise ConfigError(str(err)) from None
    if s.init_embeddings_from:
        from transformers import AutoModel

        model.minialbert.init_embeddings_from(AutoModel.from_pretrained(s.init_embeddings_from).embeddings)
    if not cfg.loss.student_logits_used(teacher.has_mlm_head):
        # No loss term reads its logits, so the head never runs (step.distillation_forward): frozen, it has no
        # optimizer state either, and the export says it was not trained.
        model.mlm_head.requires_grad_(False)
        model.config.mlm_head_trained = False
    return model
