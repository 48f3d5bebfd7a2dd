"""Parity with the original MiniALBERT code on its golden cases (see tests/reference_cases.py)."""

from __future__ import annotations

import torch

from minialbert.convert import convert_reference
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from reference_cases import case_params, load_case, require_cases

RTOL, ATOL = 1e-4, 1e-5


def test_reference_cases_are_found():
    require_cases()


@case_params
def test_forward_parity(case_dir, tmp_path):
    _, inputs, expected = load_case(case_dir)
    out_dir = convert_reference(case_dir / "student", tmp_path / "converted")
    model = MiniAlbertForMaskedLM.from_pretrained(out_dir).eval()
    with torch.no_grad():
        out = model(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["token_type_ids"],
            output_attentions=True,
            output_hidden_states=True,
        )
    torch.testing.assert_close(out.logits, expected["student_logits"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(torch.stack(out.hidden_states), expected["student_hidden_states"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(torch.stack(out.attentions), expected["student_attentions"], rtol=RTOL, atol=ATOL)


@case_params
def test_loss_parity(case_dir, tmp_path):
    meta, inputs, expected = load_case(case_dir)
    from minialbert.config import LossConfig
    from minialbert.step import distillation_forward
    from minialbert.teacher import load_teacher

    student = MiniAlbertForMaskedLM.from_pretrained(convert_reference(case_dir / "student", tmp_path / "s")).eval()
    teacher = load_teacher(case_dir / "teacher", student.config.num_recursions)
    assert teacher.layer_map == [p["teacher_layer_1based"] for p in meta["layer_mapping"]["pairs"]]
    weights = {k: meta["loss_weights"][k] for k in ("mlm", "attention", "hidden", "output")}
    loss = LossConfig(mode="paper", temperature=meta["temperature"], **weights)
    with torch.no_grad():
        terms = distillation_forward(student, teacher, inputs, loss)
    for name in ("mlm", "attention", "hidden", "output", "total"):
        torch.testing.assert_close(getattr(terms, name), expected[f"{name}_loss"], rtol=1e-4, atol=0, msg=name)
    torch.testing.assert_close(terms.attention_per_recursion, expected["attention_loss_per_recursion"], rtol=1e-4, atol=0)
    torch.testing.assert_close(terms.hidden_per_recursion, expected["hidden_loss_per_recursion"], rtol=1e-4, atol=0)
