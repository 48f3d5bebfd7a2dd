"""``launchers.submit_distill --cluster local``: the submitit launcher without Slurm, 2 CPU ranks as local
processes, runs distillation to its max steps and exports the student."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from distill_helpers import build_teacher, distill_env, pack_shards, read_metrics

REPO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "distill",
                           "tiny.yaml")

pytestmark = pytest.mark.slow


def test_submit_distill_local_runs_two_ranks_to_max_steps(tmp_path):
    teacher = build_teacher(tmp_path / "teacher")
    shards = pack_shards(teacher, tmp_path / "general")
    run_dir = tmp_path / "run"
    sources = json.dumps([{"path": str(shards), "weight": 1.0}])
    done = subprocess.run(
        [sys.executable, "-m", "launchers.submit_distill", "--cluster", "local", "--cpu", "--ntasks", "2",
         "--folder", str(tmp_path / "logs"), "--", "--config", REPO_CONFIG, "--run-dir", str(run_dir),
         "--max-steps", "4", f"teacher.path={teacher}", f"data.sources={sources}"],
        cwd=tmp_path, env=distill_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"done: {run_dir}" in done.stderr
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert json.loads((run_dir / "checkpoints" / "step_00000004" / "meta.json").read_text())["world_size"] == 2
    assert (run_dir / "export" / "config.json").is_file()


def test_submit_distill_reports_a_bad_config_as_a_failed_job(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "launchers.submit_distill", "--cluster", "local", "--cpu", "--ntasks", "1",
         "--folder", str(tmp_path / "logs"), "--", "--config", str(tmp_path / "missing.yaml"),
         "--run-dir", str(tmp_path / "run")],
        cwd=tmp_path, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "minialbert.distill exited 2" in done.stderr
