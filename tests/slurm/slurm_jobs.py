"""Helpers for the Slurm tests: submit with ``sbatch``, read states from accounting (``sacct``, as submitit
does), wait for a state with the job's output in the failure message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distill_helpers import read_metrics

CLUSTER_SH = Path(__file__).with_name("cluster.sh")
REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "distill" / "tiny.yaml")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


@dataclass
class SlurmCluster:
    state_dir: Path

    def log_tail(self, name: str = "slurmctld", lines: int = 30) -> str:
        path = self.state_dir / "log" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


_submitted: list[str] = []


def track(job_id: str) -> str:
    """Remember a job so ``cancel_tracked`` cancels it if the test ends (or fails) before it does."""
    _submitted.append(job_id)
    return job_id


def cancel_tracked() -> None:
    if _submitted:
        subprocess.run(["scancel", *_submitted], capture_output=True, timeout=60)
        _submitted.clear()


def sbatch(*args: str, env: dict | None = None, cwd: Path = REPO) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60)
    assert done.returncode == 0, f"sbatch {' '.join(args)} failed: {done.stderr}"
    return track(done.stdout.strip().split(";")[0])


def job_state(job_id: str) -> str:
    """The job's state from accounting ("RUNNING", "COMPLETED", ...; "" before slurmdbd knows the job).
    For an array job, the state of its first task."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True,
                         text=True, timeout=60).stdout.split()
    return out[0] if out else ""


def accounted_nodes(job_id: str, expected: str, timeout: float = 60) -> str:
    """The job's "NNodes|NodeList" in accounting, polled until it reads ``expected`` (slurmdbd may hold a partial
    node list for a moment under load) or the time is up; the last value read."""
    seen = [""]

    def read() -> bool:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NNodes,NodeList", "-j", job_id], capture_output=True,
                             text=True, timeout=60).stdout.split()
        seen[0] = out[0] if out else ""
        return seen[0] == expected

    try:
        wait_for(read, f"accounting to record job {job_id} on {expected}", timeout, poll=1.0)
    except AssertionError:
        pass
    return seen[0]


def array_states(job_id: str, tasks: int, timeout: float = 60) -> list[str]:
    """The states of an array job's tasks once accounting holds all ``tasks`` of them, finished (slurmdbd may
    record a task a moment after the job that depended on it started)."""

    def recorded() -> list[str] | None:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id], capture_output=True,
                             text=True, timeout=60).stdout.splitlines()
        found = [line.split("|")[1].split()[0] for line in out if line]
        return found if len(found) >= tasks and FINISHED.issuperset(found) else None

    return wait_for(recorded, f"accounting to record the {tasks} tasks of array job {job_id}", timeout, poll=0.5)


def wait_for(condition, what: str, timeout: float, output: Path | None = None, poll: float = 1.0):
    """Poll ``condition()`` until it returns a truthy value; on timeout fail with the job's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    text = output.read_text(errors="replace")[-4000:] if output is not None and output.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n--- job output ---\n{text}")


def ended(job_id: str) -> str:
    """The final state once the job is over and none of its processes is left (a cancelled job is CANCELLED
    in accounting at once, while its ranks may still be saving a checkpoint); "" until then."""
    state = job_state(job_id)
    if state not in FINISHED:
        return ""
    live = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=60).stdout.split()
    return "" if any(s in ("COMPLETING", "RUNNING", "PENDING") for s in live) else state


def wait_finished(job_id: str, timeout: float, output: Path | None = None) -> str:
    return wait_for(lambda: ended(job_id), f"job {job_id} to finish", timeout, output)


# ----------------------------------------------------------------------------- distillation jobs


def distill_args(world, run_dir, max_steps: int, *extra: str) -> list[str]:
    teacher, shards = world
    sources = json.dumps([{"path": str(shards), "weight": 1.0}])
    # Checkpoints only at the end or on a signal: what a test sees saved was saved by the stop path.
    return ["--config", TINY, "--run-dir", str(run_dir), "--max-steps", str(max_steps), f"teacher.path={teacher}",
            f"data.sources={sources}", "checkpoint.every_steps=100000", *extra]


def job_env() -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "MINIALBERT_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").is_file() else []


def job_info(job_id: str) -> dict:
    """``scontrol show job`` as a dict (JobState, Restarts, ...); {} once the job left slurmctld's memory."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def requeued(job_id: str) -> bool:
    """True once the job was requeued; fails at once if it ended instead."""
    if job_info(job_id).get("Restarts") == "1":
        return True
    assert not ended(job_id), f"job {job_id} ended ({ended(job_id)}) instead of being requeued"
    return False


def sent(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
