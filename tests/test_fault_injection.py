"""A run dir is never lost: real 2-rank runs killed at random moments, their newest checkpoint damaged, `latest`
deleted, the disk filled up, and signals sent in a storm; each time the run resumes and ends exactly where an
uninterrupted run ends. The counts are in docs/checkpoints.md ("Fault injection")."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill_helpers import REPO, distill_env, read_metrics
from minialbert import checkpoint as ckpt
from run_watch import (DROPOUT, EVERY_2, assert_same_records, assert_same_weights, engine_weights, finish, latest,
                       log_tail, logged_steps, make_world, rank_processes, start_distill, wait_for_step)

pytestmark = pytest.mark.slow

MAX_STEPS = 12
ARGS = (EVERY_2, *DROPOUT, f"--max-steps={MAX_STEPS}")
FINAL = ckpt.tag_for(MAX_STEPS)
# One fault per start, in this order; the moments within each are drawn from a seeded RNG.
FAULTS = ("start-up", "step", "inside a save", "step", "step, then the newest checkpoint truncated",
          "step, then latest deleted")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def straight(world):
    run_dir = world[0] / "straight"
    assert finish(start_distill(run_dir, world, *ARGS)) == 0, log_tail(run_dir)
    return run_dir


def newest_complete_step(run_dir: Path) -> int:
    complete = ckpt.complete_checkpoints(run_dir)
    return int(complete[-1].name.removeprefix("step_")) if complete else 0


def resume_step(run_dir: Path) -> int:
    """The step a start in ``run_dir`` continues from (the run's own choice: newest complete, verified)."""
    found = ckpt.resume_tag(run_dir)
    return found[1]["step"] if found else 0


def inject(run_dir: Path, world, fault: str, rng: random.Random) -> dict:
    """Start the run, SIGKILL every process of it at a moment drawn for ``fault``; what happened."""
    logged_before = (logged_steps(run_dir) or [0])[-1]
    start = resume_step(run_dir)
    env = {}
    if fault == "inside a save":  # every rank kills itself after writing its files, before the save completes
        env[ckpt.FAULT_AFTER_SHARDS] = str(newest_complete_step(run_dir) + 2 * rng.randint(1, 2))
    proc = start_distill(run_dir, world, *ARGS, env=env)
    try:
        if fault == "start-up":
            time.sleep(rng.uniform(0.5, 6.0))  # the launcher, imports, DeepSpeed's initialize
        elif fault == "inside a save":
            proc.wait(timeout=600)  # the ranks kill themselves in the middle of that save
        else:
            wait_for_step(proc, run_dir, min(logged_before + rng.randint(1, 2), MAX_STEPS - 1))
            time.sleep(rng.uniform(0.0, 0.3))  # within a step, or a save
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        code = finish(proc)
    logged = (logged_steps(run_dir) or [0])[-1]
    saved = newest_complete_step(run_dir)
    event = {"fault": fault, "killed": code != 0, "from": start, "logged": logged, "saved": saved,
             "trained": max(0, logged - start)}
    if fault.endswith("truncated") and saved:
        folder = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(saved)
        shard = max((p for p in folder.iterdir() if p.name.endswith("optim_states.pt")), key=lambda p: p.stat().st_size)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        event["damaged"] = shard.name
    if fault.endswith("latest deleted"):
        (ckpt.checkpoint_root(run_dir) / ckpt.LATEST).unlink(missing_ok=True)
    return event


@pytest.fixture(scope="module")
def faulted(world):
    run_dir = world[0] / "faulted"
    rng = random.Random(20261129)
    events = [inject(run_dir, world, fault, rng) for fault in FAULTS]
    start = resume_step(run_dir)
    assert finish(start_distill(run_dir, world, *ARGS)) == 0, log_tail(run_dir)
    events.append({"fault": "none (to the end)", "from": start, "trained": MAX_STEPS - start})
    return run_dir, events


def test_killed_six_times_damaged_and_unpointed_the_run_ends_as_if_uninterrupted(straight, faulted):
    run_dir, events = faulted
    faults = events[:len(FAULTS)]
    assert all(e["killed"] for e in faults), events
    in_save = faults[FAULTS.index("inside a save")]
    assert in_save["logged"] > in_save["saved"]  # died in the save after its last logged step
    assert any(e.get("damaged") for e in events), events  # a truncated shard was there to fall back from
    log = log_tail(run_dir, 10**7)
    assert "is damaged" in log and "using step_" in log  # the fallback said so
    assert_same_records(read_metrics(run_dir), read_metrics(straight))
    assert_same_weights(engine_weights(run_dir, FINAL), engine_weights(straight, FINAL))
    assert latest(run_dir) == FINAL
    assert list(ckpt.checkpoint_root(run_dir).glob("*.damaged"))  # kept for inspection, never loaded
    replayed = sum(e["trained"] for e in events) - MAX_STEPS
    print(f"faults injected {len(faults)}, survived {len(faults)}; steps trained {MAX_STEPS + replayed} for "
          f"{MAX_STEPS}, replayed {replayed}; {events}")


def test_a_run_dir_without_latest_resumes_instead_of_starting_over(world, straight, tmp_path):
    """The issue's first report: with `latest` gone, a run retrained from step 0 and pruned the good checkpoints."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(straight, run_dir)
    (ckpt.checkpoint_root(run_dir) / ckpt.LATEST).unlink()
    before = ckpt.complete_checkpoints(run_dir)
    records = read_metrics(run_dir)
    assert finish(start_distill(run_dir, world, *ARGS)) == 0, log_tail(run_dir)
    assert f"resumed from {ckpt.checkpoint_root(run_dir) / FINAL} at step {MAX_STEPS}" in log_tail(run_dir)
    assert read_metrics(run_dir) == records and ckpt.complete_checkpoints(run_dir) == before


def test_resuming_with_another_student_or_data_names_the_fields(world, straight, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(straight, run_dir)
    proc = start_distill(run_dir, world, *ARGS, "student.embedding_size=8", "train.seed=3")
    assert finish(proc) == 2
    errors = [line for line in log_tail(run_dir, 10**6).splitlines() if line.startswith("error:")]
    assert errors == [f"error: {ckpt.checkpoint_root(run_dir) / FINAL} was made with another model or data: "
                      f"student.embedding_size 16 -> 8; train.seed 42 -> 3; resume with the checkpoint's values, or "
                      f"start over with --restart or a new --run-dir"]


def test_restart_says_what_it_removes_and_starts_over(world, straight, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(straight, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    assert finish(start_distill(run_dir, world, *ARGS, "--max-steps=2", "--restart")) == 0, log_tail(run_dir)
    log = log_tail(run_dir, 10**6)
    assert f"--restart: removing {run_dir / 'checkpoints'}, {run_dir / 'metrics.jsonl'}" in log
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "notes.txt").read_text() == "mine"  # only the run's own outputs go


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def test_a_full_disk_stops_the_run_with_one_line_and_the_checkpoint_resumes(world, straight, tmp_path):
    # The run dir is the small disk; its log (RUN_DIR.log) is beside it, so that the error line can be read.
    run_dir = disk = tmp_path / "run"
    _mount_tmpfs(disk, "16m")
    try:
        proc = start_distill(run_dir, world, *ARGS)
        try:
            wait_for_step(proc, run_dir, 3)
            with (disk / "filler").open("wb") as f:  # the rest of the disk, at once
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
        finally:
            code = finish(proc)
        log = log_tail(run_dir, 10**7)
        assert code == 74, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0] and str(run_dir) in errors[0], errors
        kept = newest_complete_step(run_dir)
        assert kept >= 2 and latest(run_dir) == ckpt.tag_for(kept)
        assert ckpt.verify(ckpt.checkpoint_root(run_dir) / ckpt.tag_for(kept)) is None
        leftovers = [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(".space_probe")]
        assert not leftovers
        assert all((p / ckpt.META).is_file() for p in ckpt.checkpoint_root(run_dir).glob("step_*"))
        (disk / "filler").unlink()
        assert finish(start_distill(run_dir, world, *ARGS)) == 0, log_tail(run_dir)
        assert_same_records(read_metrics(run_dir), read_metrics(straight))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_storm_of_stop_signals_still_ends_in_exit_75(world, tmp_path):
    run_dir = tmp_path / "storm"
    proc = start_distill(run_dir, world, *ARGS)
    sent = 0
    try:
        wait_for_step(proc, run_dir, 2)
        ranks = rank_processes(proc)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and sent < 20000:
            for rank in ranks:
                try:
                    rank.send_signal(signal.SIGTERM if sent % 2 else signal.SIGUSR1)
                except Exception:  # the rank has exited
                    pass
            sent += 1
            time.sleep(0.002)
    finally:
        code = finish(proc)
    assert sent > 10
    assert code == 75, log_tail(run_dir)
    saved = newest_complete_step(run_dir)
    assert f"stopped by signal at step {saved}; checkpoint saved; exit 75" in log_tail(run_dir)


def test_run_dir_naming_a_file_is_one_line(world, tmp_path):
    _, teacher, shards = world
    run_file = tmp_path / "run"
    run_file.write_text("not a folder")
    sources = json.dumps([{"path": str(s)} for s in shards])
    done = subprocess.run([sys.executable, "minialbert/distill.py", "--config", "configs/distill/tiny.yaml",
                           "--run-dir", str(run_file), f"teacher.path={teacher}", f"data.sources={sources}"],
                          cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: run_dir='{run_file}': a file, expected a folder (new or holding a run)"]
