"""Distillation on the test cluster: ``sbatch slurm/pretrain.sh`` with 2 CPU ranks, the time-limit signal and
requeues resuming from the run dir, ``scancel`` leaving a loadable checkpoint, and the submitit launcher's
job hitting its time limit, requeued, finishing. Tiny teacher and shards from tests/distill_helpers.py."""

from __future__ import annotations

import re
import shutil

import pytest
from distill_helpers import build_teacher, pack_shards

from minialbert import checkpoint as ckpt
from slurm_jobs import (REPO, distill_args, job_env, job_info, requeued, sbatch, sent, steps, track,
                        wait_finished, wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_distill")
    teacher = build_teacher(root / "teacher")
    return teacher, pack_shards(teacher, root / "general")


def submit_pretrain(world, run_dir, max_steps: int, log, *sbatch_opts: str) -> str:
    return sbatch("--ntasks=2", f"--output={log}", *sbatch_opts, str(REPO / "slurm" / "pretrain.sh"),
                  *distill_args(world, run_dir, max_steps), env=job_env(), cwd=run_dir.parent)


def test_pretrain_sh_survives_time_limit_signal_and_requeue_and_finishes(slurm_cluster, world, tmp_path):
    run_dir, log, n = tmp_path / "run", tmp_path / "job.out", 150
    job = submit_pretrain(world, run_dir, n, log)

    # What Slurm does at --signal=B:USR1@...: signal the batch script, which forwards to the ranks and requeues.
    wait_for(lambda: len(steps(run_dir)) >= 3, "the first steps", 600, log, poll=0.3)
    sent("scancel", "--batch", "--signal=USR1", job)
    wait_for(lambda: requeued(job), "pretrain.sh to requeue itself", 300, log, poll=0.3)
    first_stop = ckpt.resume_tag(run_dir)[1]["step"]
    assert steps(run_dir)[-1] == first_stop

    # An admin's (or preemption's) requeue in the middle of the resumed run.
    wait_for(lambda: job_info(job).get("JobState") == "RUNNING" and steps(run_dir)[-1] >= first_stop + 3,
             "the resumed run's steps", 600, log, poll=0.3)
    sent("scontrol", "requeue", job)

    assert wait_finished(job, timeout=600, output=log) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert steps(run_dir) == list(range(1, n + 1)), "a step is missing or logged twice"
    assert job_info(job)["Restarts"] == "2"
    assert text.count("requeueing job") == 1  # by the script after USR1; Slurm requeued the second time
    assert len(re.findall(r"resumed from .* at step \d+", text)) == 2
    assert "2 ranks" in text
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.tag_for(n)
    assert ckpt.read_meta(run_dir, ckpt.tag_for(n))["world_size"] == 2
    assert (run_dir / "export" / "config.json").is_file() and (run_dir / "export" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def cancelled_run(slurm_cluster, world, tmp_path_factory):
    """A pretrain.sh run cancelled with scancel in the middle: (run dir, job log, job id)."""
    root = tmp_path_factory.mktemp("cancelled")
    run_dir, log = root / "run", root / "job.out"
    job = submit_pretrain(world, run_dir, 100000, log)
    wait_for(lambda: len(steps(run_dir)) >= 3, "the first steps", 600, log, poll=0.3)
    sent("scancel", job)
    assert wait_finished(job, timeout=300, output=log) == "CANCELLED"
    return run_dir, log, job


def test_scancel_leaves_a_valid_latest_checkpoint(cancelled_run):
    run_dir, log, job = cancelled_run
    tag, meta = ckpt.resume_tag(run_dir)
    logged = steps(run_dir)
    assert meta["step"] == logged[-1] and logged == list(range(1, meta["step"] + 1))
    assert meta["world_size"] == 2
    for rank in (0, 1):
        assert (run_dir / "checkpoints" / tag / f"trainer_state_rank{rank}.pt").is_file()
    assert f"stopped by signal at step {meta['step']}" in log.read_text()
    assert "requeueing" not in log.read_text()  # scancel means stop
    assert job_info(job).get("Restarts", "0") == "0"


def submitit_job(world, run_dir, max_steps, folder, **executor_args):
    from launchers.submit_distill import submit_distill

    return submit_distill(distill_args(world, run_dir, max_steps), cpu=True, folder=folder, ntasks=2,
                          **executor_args)


def test_submitit_job_resumes_hits_time_limit_is_requeued_and_returns(cancelled_run, world, tmp_path, monkeypatch):
    """Resumes the cancelled run (so its checkpoint loads), gets submitit's time-limit signal, checkpoints,
    is requeued by submitit and returns its run dir."""
    run_dir = tmp_path / "run"
    shutil.copytree(cancelled_run[0], run_dir)
    start = steps(run_dir)[-1]
    # More steps than the first run can do before the warning (at most ~32 s in: ~600 steps of ~50 ms on a quiet
    # 2-core machine); the second run, given time, does the rest.
    n = start + 1200
    for key, value in job_env().items():
        monkeypatch.setenv(key, value)
    # A 1-minute limit with the signal 58 s before it: slurmctld checks limits every 30 s, so the warning
    # arrives 2-32 s into the run.
    job = submitit_job(world, run_dir, n, tmp_path / "submitit", time_min=1, signal_delay_s=58)
    track(job.job_id)
    log = tmp_path / "submitit" / f"{job.job_id}_0_log.err"  # rank 0's stderr; its stdout is _log.out
    wait_for(lambda: requeued(job.job_id), "submitit to requeue the job", 600, log, poll=0.3)
    # The second run gets time to finish; and skip the requeue hold.
    sent("scontrol", "update", f"JobId={job.job_id}", "TimeLimit=10", "StartTime=now")

    assert job.results() == [str(run_dir)] * 2  # one result per rank
    assert wait_finished(job.job_id, timeout=120, output=log) == "COMPLETED"
    assert steps(run_dir) == list(range(1, n + 1)), "a step is missing or logged twice"
    text = log.read_text() + log.with_name(f"{job.job_id}_0_log.out").read_text()
    assert f"resumed from {run_dir / 'checkpoints' / ckpt.tag_for(start)} at step {start}" in text
    assert len(re.findall(r"resumed from .* at step \d+", text)) == 2
    assert (run_dir / "export" / "config.json").is_file()
