import sys
from pathlib import Path

import pytest

# Test helpers (reference_cases, tiny_models, ...) import as top-level modules. Never import "conftest" itself:
# tests/slurm has one too, and the two would shadow each other.
sys.path.insert(0, str(Path(__file__).parent))

import minialbert  # noqa: E402,F401  (registers the Auto classes)
from tiny_models import tiny_config  # noqa: E402


@pytest.fixture
def tiny():
    return tiny_config
