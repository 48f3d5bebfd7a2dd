"""Damaged shards through the real distill entry point (one process): exit 2, one `error:` line naming the file,
before the run dir exists (issue 16). The reader's checks themselves are tested in test_data_reader.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from distill_helpers import REPO, build_teacher, distill_env, pack_shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    teacher = build_teacher(root / "teacher")
    return teacher, pack_shards(teacher, root / "shards", n_docs=40)


def damage(shards, tmp_path, fault: str):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["splits"]["train"][0]["file"]
    if fault == "truncated":
        shard.write_bytes(shard.read_bytes()[:-64])
    elif fault == "bit flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    else:  # a manifest of another seq_len: today "could not broadcast input array from shape (32,) into (16,)"
        manifest["seq_len"] = 16
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, shard


@pytest.mark.parametrize("fault, message", [
    ("truncated", "bytes but manifest.json says"),
    ("bit flip", "does not match manifest.json"),
    ("seq_len", "rows of up to 32 tokens but manifest.json says seq_len 16"),
])
def test_damaged_shards_stop_distill_before_the_run_dir_exists(world, tmp_path, fault, message):
    teacher, shards = world
    folder, shard = damage(shards, tmp_path, fault)
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(REPO / "minialbert" / "distill.py"), "--config", str(REPO / "configs/distill/tiny.yaml"),
         "--run-dir", str(run_dir), f"teacher.path={teacher}", f"data.sources=[{{path: {folder}}}]"],
        cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(shard) in errors[0] and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not run_dir.exists()
