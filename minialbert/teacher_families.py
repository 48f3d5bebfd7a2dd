"""The teacher families: per Hugging Face ``model_type``, how to reach its encoder, layers, attention and MLM head.

One entry per family; a new family is one more entry in ``FAMILIES``. ``teacher.py`` runs a teacher by its entry's
``runner``:
  ``bert``        BERT-shaped layers (``encoder.layer[i].attention.self.query`` ...), run layer by layer with
                  softmax(QKᵀ/√d + mask) attention: the maps-free attention term gets its queries and keys;
  ``modernbert``  pre-norm layers with fused ``Wqkv``, rotary positions and alternating global / local (sliding
                  window) attention: softmax(QKᵀ/√d + mask) after rotary, the window part of the mask — the
                  maps-free term gets the rotated queries and keys and the window;
  ``outputs``     the model's own forward with ``output_hidden_states`` / ``output_attentions``: its attention
                  probabilities are the teacher side of the attention term (DeBERTa's disentangled attention
                  adds content→position and position→content scores that are no QKᵀ of any one query and key,
                  and any other encoder ``AutoModel`` loads runs this way too).
``student_form`` names the student layer form that mirrors the family's layers (``MiniAlbertConfig.layer_form``),
into which the teacher initialisation copies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class TeacherError(ValueError):
    """The teacher folder or the layer mapping is unusable."""


@dataclass(frozen=True)
class Family:
    name: str
    """What start-up and ``--check`` print ("RoBERTa")."""
    base: str | None
    """Attribute of the *ForMaskedLM model holding the encoder (``roberta``); None: the generic path."""
    runner: str
    """``bert``, ``modernbert`` or ``outputs`` (see the module docstring)."""
    head_prefixes: tuple[str, ...] = ()
    """Checkpoint key prefixes of its MLM head; a checkpoint without any has no logit term (an ELECTRA
    discriminator, a bare encoder)."""
    logits: Callable | None = None
    """(masked-LM model, (M, H) final hidden states) -> (M, V) logits."""
    student_form: str | None = None
    """The student layer form (``MiniAlbertConfig.layer_form``) that mirrors this family's layers and that the
    teacher init can copy into: "bert" or "modernbert"; None: no mirrored form yet (the student is BERT-form,
    from a random init)."""
    token_types: bool = True
    """The model takes ``token_type_ids`` (when its ``type_vocab_size`` > 0)."""
    position_offset: Callable = field(default=lambda config: 0)
    """config -> index of the position-embedding row of the first token (RoBERTa: padding_idx + 1)."""

    @property
    def fused_attention(self) -> bool:
        """Whether the maps-free attention term gets this family's own queries and keys (else its maps)."""
        return self.runner in ("bert", "modernbert")

    @property
    def attention_path(self) -> str:
        return {"bert": "fused: teacher queries and keys, softmax(QKᵀ/√d + mask)",
                "modernbert": "fused: teacher queries and keys after rotary, local window in the mask",
                "outputs": "the teacher's own attention probabilities (student side maps-free)"}[self.runner]


def _roberta_offset(config) -> int:
    return config.pad_token_id + 1  # create_position_ids_from_input_ids: positions start at padding_idx + 1


def _deberta_logits(model, x):
    if hasattr(model, "lm_predictions"):
        return model.lm_predictions(x, model.deberta.embeddings.word_embeddings)
    return model.cls(x)


_ROBERTA = dict(base="roberta", runner="bert", head_prefixes=("lm_head.",), logits=lambda m, x: m.lm_head(x),
                student_form="bert", position_offset=_roberta_offset)

FAMILIES: dict[str, Family] = {
    "bert": Family("BERT", base="bert", runner="bert", head_prefixes=("cls.predictions.",),
                   logits=lambda m, x: m.cls.predictions(x), student_form="bert"),
    "roberta": Family("RoBERTa", **_ROBERTA),
    "xlm-roberta": Family("XLM-RoBERTa", **_ROBERTA),
    "electra": Family("ELECTRA", base="electra", runner="bert", head_prefixes=("generator_lm_head.",),
                      logits=lambda m, x: m.generator_lm_head(m.generator_predictions(x)),
                      student_form="bert"),
    "deberta-v2": Family("DeBERTa-v2/v3", base="deberta", runner="outputs",
                         head_prefixes=("cls.predictions.", "lm_predictions."), logits=_deberta_logits,
                         student_form="deberta"),
    "modernbert": Family("ModernBERT", base="model", runner="modernbert", head_prefixes=("head.", "decoder."),
                         logits=lambda m, x: m.decoder(m.head(x)), token_types=False, student_form="modernbert"),
}
GENERIC = Family("generic encoder", base=None, runner="outputs")


def accepted() -> str:
    """The families, for error messages: 'bert, roberta, ...'."""
    return ", ".join(FAMILIES)


def family_of(config) -> Family:
    """The entry for a teacher config (GENERIC for another encoder; the caller rejects decoders first)."""
    return FAMILIES.get(config.model_type, GENERIC)


def is_encoder_only(config) -> bool:
    """False for decoder-only (GPT-2, Llama) and encoder-decoder (T5) models: nothing here can distil them."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    # BERT and RoBERTa also have causal-LM classes; a model type with a causal LM and no masked LM is a decoder.
    return not (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def uses_token_types(config) -> bool:
    return family_of(config).token_types and (getattr(config, "type_vocab_size", 0) or 0) > 0


def position_offset(config) -> int:
    """Row of the teacher's position embeddings that its first token uses (0; RoBERTa/XLM-R padding_idx + 1)."""
    return family_of(config).position_offset(config)


def max_positions(config) -> int:
    """The longest row the teacher takes: its position table less the offset (RoBERTa: 514 - 2 = 512)."""
    return config.max_position_embeddings - position_offset(config)


def layer_norm_eps(config) -> float:
    return getattr(config, "layer_norm_eps", None) or getattr(config, "norm_eps", None) or 1e-12


def _unmirrored(config) -> str | None:
    """What keeps the ``deberta`` form from mirroring this DeBERTa config (its settings beyond v3's), or None."""
    if config.model_type != "deberta-v2":
        return None
    if not getattr(config, "relative_attention", False):
        return "relative_attention is off"
    if not getattr(config, "share_att_key", False):
        return "share_att_key is off (separate position projections)"
    if getattr(config, "conv_kernel_size", 0):
        return "it has a convolution layer (conv_kernel_size)"
    if not set(config.pos_att_type or []) <= {"c2p", "p2c"}:
        return f"pos_att_type {config.pos_att_type} (the form has c2p and p2c)"
    return None


def student_form(config) -> str:
    """The student layer form that mirrors the teacher's layers ("bert" where none does)."""
    form = family_of(config).student_form
    return form if form and not _unmirrored(config) else "bert"


def copy_init_refusal(config, layer_form: str = "bert") -> str | None:
    """None where a weight-copying student initialisation can read the teacher into a student of ``layer_form``
    (BERT-shaped layers into the ``bert`` form, ModernBERT's into ``modernbert``, DeBERTa-v2/v3's into
    ``deberta``); else the one-line reason it cannot."""
    family = family_of(config)
    unmirrored = _unmirrored(config)
    if family.student_form == layer_form and not unmirrored:
        return None
    if unmirrored:
        return (f"teacher init is not available for this {family.name} teacher: {unmirrored}; the {family.student_form} "
                f"form mirrors DeBERTa-v3's layers")
    if family.student_form is None:
        return (f"teacher init is not available for family {family.name} (model_type={config.model_type!r}): no "
                f"student form mirrors its layers yet; families with a teacher init: "
                + ", ".join(k for k, f in FAMILIES.items() if f.student_form))
    return (f"teacher init is not available for a {layer_form}-form student of family {family.name}: its layers are "
            f"copied into the {family.student_form} form (student.layer_form: auto)")


def uniform_layer_map(num_teacher_layers: int, num_recursions: int) -> list[int]:
    """Teacher layer (1-based) for each recursion, evenly spaced and ending at the last layer (12 -> 6: 2, 4, ..., 12)."""
    if num_recursions > num_teacher_layers:
        raise TeacherError(
            f"student.num_recursions={num_recursions} exceeds the teacher's {num_teacher_layers} layers"
        )
    return [round((i + 1) * num_teacher_layers / num_recursions) for i in range(num_recursions)]


def layer_map_for(layer_map: list[int] | None, num_teacher_layers: int, num_recursions: int) -> list[int]:
    """The teacher layer each recursion distils from: ``teacher.layer_map`` when given, else the uniform map."""
    if layer_map is None:
        return uniform_layer_map(num_teacher_layers, num_recursions)
    if len(layer_map) != num_recursions:
        raise TeacherError(f"teacher.layer_map has {len(layer_map)} entries, expected {num_recursions}")
    if any(not 1 <= m <= num_teacher_layers for m in layer_map) or list(layer_map) != sorted(set(layer_map)):
        raise TeacherError(f"teacher.layer_map={layer_map}: expected increasing layers in 1..{num_teacher_layers}")
    return list(layer_map)


def layers_run(config, layer_map: list[int], logits: bool) -> int:
    """Teacher layers one forward runs: all when its logits are distilled (``logits``) or the model's own forward
    runs (DeBERTa, generic encoders); else up to the last mapped layer."""
    if logits or family_of(config).runner == "outputs":
        return config.num_hidden_layers
    return layer_map[-1]
