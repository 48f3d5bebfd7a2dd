"""Discovery of the golden cases produced by the original MiniALBERT code.

Every case folder (one holding ``case.json``) under ``../shared/fixtures/reference/`` and every folder listed in
``MINIALBERT_REFERENCE_FIXTURES`` (os.pathsep-separated; a case folder, or a folder of case folders). A clone
without them skips the golden tests with the reason; with ``MINIALBERT_REQUIRE_FIXTURES=1`` (CI sets it) their
absence fails instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"


def _cases_in(folder: Path) -> list[Path]:
    if (folder / "case.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "case.json").is_file()) if folder.is_dir() else []


def discover_cases() -> list[Path]:
    roots = [SHARED_REFERENCE] + [Path(p) for p in os.environ.get("MINIALBERT_REFERENCE_FIXTURES", "").split(os.pathsep) if p]
    cases: dict[Path, None] = {}
    for root in roots:
        for case in _cases_in(root):
            cases[case.resolve()] = None
    return list(cases)


CASES = discover_cases()
REQUIRED = os.environ.get("MINIALBERT_REQUIRE_FIXTURES") == "1"
MISSING = ("no golden case found: expected ../shared/fixtures/reference/<case>/case.json beside the clone, or "
           "folders in MINIALBERT_REFERENCE_FIXTURES")
case_params = pytest.mark.parametrize("case_dir", CASES, ids=[c.name for c in CASES])


def require_cases() -> None:
    """Skip (a clone elsewhere) or fail (MINIALBERT_REQUIRE_FIXTURES=1) when no golden case is at hand."""
    if not CASES:
        if REQUIRED:
            pytest.fail(MISSING)
        pytest.skip(MISSING)


def load_case(case_dir: Path) -> tuple[dict, dict, dict]:
    """(case.json, inputs, expected tensors)."""
    meta = json.loads((case_dir / "case.json").read_text())
    return meta, load_file(str(case_dir / "inputs.safetensors")), load_file(str(case_dir / "expected.safetensors"))
