"""Parity with the original MiniALBERT code on its golden cases (see tests/reference_cases.py)."""

from __future__ import annotations

import torch

from minialbert.convert import convert_reference
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from reference_cases import CASES, case_params, load_case

RTOL, ATOL = 1e-4, 1e-5


def test_reference_cases_are_found():
    assert CASES, "no golden case found: expected ../shared/fixtures/reference/<case>/case.json"


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
