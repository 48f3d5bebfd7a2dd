"""Importing checkpoints of the original MiniALBERT code."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from minialbert.convert import ConversionError, convert_reference, load_reference_checkpoint
from reference_cases import CASES

CASE = CASES[0] if CASES else None
pytestmark = pytest.mark.skipif(CASE is None, reason="no golden case")


def _copy_student(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(CASE / "student", src)
    return src


def test_missing_key_is_refused_and_named(tmp_path):
    src = _copy_student(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    del state["vocab_projector.bias"]
    save_file(state, str(src / "model.safetensors"))
    done = subprocess.run(
        [sys.executable, "-m", "minialbert.convert", "reference", str(src), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "missing keys ['mlm_head.decoder.bias']" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unexpected_key_is_refused_and_named(tmp_path):
    src = _copy_student(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    state["albert.extra_head.weight"] = torch.zeros(2)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="albert.extra_head.weight"):
        load_reference_checkpoint(src)


def test_pytorch_model_bin_loads_the_same(tmp_path):
    src = _copy_student(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    a = load_reference_checkpoint(src).state_dict()
    b = load_reference_checkpoint(CASE / "student").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_not_an_original_config_is_refused(tmp_path):
    src = _copy_student(tmp_path)
    text = (src / "config.json").read_text().replace('"model_type": "albert"', '"model_type": "bert"')
    (src / "config.json").write_text(text)
    with pytest.raises(ConversionError, match="model_type"):
        load_reference_checkpoint(src)


def test_refuses_to_overwrite_a_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert_reference(CASE / "student", out)
    assert (out / "keep.txt").read_text() == "x"
