"""Starting real 2-rank distillation runs in the background and watching them: their metrics, checkpoints and
rank processes; comparing a run with another bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import torch

from distill_helpers import REPO, build_teacher, distill_command, distill_env, pack_shards

EVERY_2 = "checkpoint.every_steps=2"  # tiny.yaml keeps the last 2
# Dropout on, so an exact resume needs every rank's RNG state back (tiny.yaml turns dropout off); the peak FLOP/s
# measured at every start (tiny.yaml sets it), so a measurement that drew from the restored RNG would show.
DROPOUT = ("student.hidden_dropout_prob=0.1", "student.attention_probs_dropout_prob=0.1", "train.peak_tflops=null")
# What must match bit for bit between a resumed and a straight run (the rest is timing).
EXACT = ("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output", "tokens", "lr", "grad_norm",
         "loss_scale", "epoch")


def make_world(root: Path) -> tuple[Path, Path, list[Path]]:
    """(root, teacher, [shards]): the tiny teacher and one shard set of 64-token rows, many of them partly filled,
    so that a step's token count tells which samples it read."""
    teacher = build_teacher(root / "teacher")
    return root, teacher, [pack_shards(teacher, root / "general", seed=0, seq_len=64)]


def start_distill(run_dir: Path, world, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """The launcher in its own process group (so the whole run can be SIGKILLed at once); output to RUN_DIR.log."""
    _, teacher, shards = world
    log = open(f"{run_dir}.log", "a")
    return subprocess.Popen(distill_command(run_dir, teacher, shards, *extra), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**distill_env(), **(env or {})}, start_new_session=True)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written
            pass
    return steps


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> int:
    """Poll metrics.jsonl until it logs ``step`` (or later); returns the last logged step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = logged_steps(run_dir)
        if steps and steps[-1] >= step:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before step {step}: {log_tail(run_dir)}")
        time.sleep(0.005)
    raise AssertionError(f"no step {step} within {timeout}s: {log_tail(run_dir)}")


def log_tail(run_dir: Path, chars: int = 3000) -> str:
    path = Path(f"{run_dir}.log")
    return path.read_text()[-chars:] if path.is_file() else ""


def rank_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The training ranks under the launcher (the processes it started with --local_rank=N)."""
    children = psutil.Process(proc.pid).children(recursive=True)
    return [c for c in children if any(a.startswith("--local_rank=") for a in c.cmdline())]


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def trainer_state(run_dir: Path, tag: str, rank: int) -> dict:
    return torch.load(run_dir / "checkpoints" / tag / f"trainer_state_rank{rank}.pt", weights_only=True)


def engine_weights(run_dir: Path, tag: str = "step_00000008") -> dict[str, torch.Tensor]:
    """The fp32 master weights of a checkpoint, gathered from its ZeRO shards by DeepSpeed."""
    from minialbert import engine as ds

    return ds.consolidated_state_dict(run_dir / "checkpoints", tag)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


def assert_same_records(resumed: list[dict], straight: list[dict], keys=EXACT) -> None:
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, len(straight) + 1))
    for r, s in zip(resumed, straight):
        assert {k: r[k] for k in keys} == {k: s[k] for k in keys}, f"step {r['step']}"
