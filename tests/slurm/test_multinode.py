"""Distillation across the two nodes of the test cluster (network namespaces node1 and node2, each with its own
hostname, address and slurmd; one shared disk): `sbatch --nodes=2 slurm/pretrain.sh` with 1 and 2 ranks per
node, the same numbers as on one node, preemption across nodes with a requeue, a 4-rank checkpoint resumed on
2 ranks of one node, and the submitit launcher's time-limit requeue with nodes=2."""

from __future__ import annotations

import re
import shutil

import pytest

from distill_helpers import build_teacher, pack_shards, read_metrics
from minialbert import checkpoint as ckpt
from slurm_jobs import (REPO, accounted_nodes, distill_args, job_env, job_info, requeued, sbatch, sent, steps, track, wait_finished,
                        wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.slow]

STEPS = 8
# Global batch 8 as micro-batches of 2: 4 ranks x 1, 2 ranks x 2 accumulated, 1 rank x 4. Checkpoints every 2
# steps; dropout on (exact resume needs every rank's RNG state); the peak FLOP/s measured at every start.
RECIPE = ("train.micro_batch_size=2", "checkpoint.every_steps=2", "student.hidden_dropout_prob=0.1",
          "student.attention_probs_dropout_prob=0.1", "train.peak_tflops=null")
EXACT = ("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output", "tokens", "lr", "grad_norm")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    teacher = build_teacher(root / "teacher")
    return teacher, pack_shards(teacher, root / "general", seq_len=64)


def pretrain(world, run_dir, shape: tuple[str, ...], max_steps: int = STEPS, *extra: str) -> tuple[str, object]:
    log = run_dir.parent / f"{run_dir.name}.out"
    job = sbatch(*shape, f"--output={log}", str(REPO / "slurm" / "pretrain.sh"),
                 *distill_args(world, run_dir, max_steps, *RECIPE, *extra), env=job_env(), cwd=run_dir.parent)
    return job, log


def run_to_end(world, run_dir, shape, max_steps: int = STEPS) -> str:
    job, log = pretrain(world, run_dir, shape, max_steps)
    assert wait_finished(job, timeout=900, output=log) == "COMPLETED", log.read_text()[-4000:]
    return log.read_text()


def exact(run_dir) -> list[dict]:
    return [{k: r[k] for k in EXACT} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def four_ranks_two_nodes(slurm_cluster, world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("4on2") / "run"
    text = run_to_end(world, run_dir, ("--nodes=2", "--ntasks-per-node=2"))
    return run_dir, text


def test_one_rank_on_each_node_completes_with_checkpoints_and_export(slurm_cluster, world, tmp_path):
    run_dir = tmp_path / "run"
    job, log = pretrain(world, run_dir, ("--nodes=2", "--ntasks-per-node=1"))
    assert wait_finished(job, timeout=900, output=log) == "COMPLETED", log.read_text()[-4000:]
    text = log.read_text()
    assert "2 ranks, master node1:" in text  # MASTER_ADDR: the allocation's first host, by name
    assert steps(run_dir) == list(range(1, STEPS + 1))
    assert ckpt.read_meta(run_dir, ckpt.tag_for(STEPS))["world_size"] == 2
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert accounted_nodes(job, "2|node[1-2]") == "2|node[1-2]"


def test_four_ranks_on_two_nodes_give_the_numbers_of_four_ranks_on_one(slurm_cluster, world, four_ranks_two_nodes,
                                                                       tmp_path):
    run_dir, text = four_ranks_two_nodes
    assert "4 ranks, master node1:" in text and "world 4 x micro 2 x accumulation 1" in text
    one_node = tmp_path / "one"
    run_to_end(world, one_node, ("--nodes=1", "--ntasks=4"))
    # The same ranks, data and gloo reductions; only where the ranks run differs: bit for bit.
    assert exact(run_dir) == exact(one_node)
    assert (run_dir / "export" / "model.safetensors").is_file()


def test_usr1_on_two_nodes_saves_on_every_rank_requeues_and_resumes_exactly(slurm_cluster, world,
                                                                             four_ranks_two_nodes, tmp_path):
    run_dir = tmp_path / "run"
    job, log = pretrain(world, run_dir, ("--nodes=2", "--ntasks-per-node=2"), STEPS, "checkpoint.every_steps=100")
    wait_for(lambda: len(steps(run_dir)) >= 3, "the first steps", 600, log, poll=0.2)
    sent("scancel", "--batch", "--signal=USR1", job)  # what --signal=B:USR1@... does at the time limit
    wait_for(lambda: requeued(job), "pretrain.sh to requeue itself", 300, log, poll=0.3)
    stopped = ckpt.resume_tag(run_dir)[1]["step"]
    assert 3 <= stopped < STEPS
    tag = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(stopped)
    assert sorted(p.name for p in tag.glob("trainer_state_rank*.pt")) == [f"trainer_state_rank{r}.pt" for r in range(4)]
    assert wait_finished(job, timeout=900, output=log) == "COMPLETED", log.read_text()[-4000:]
    text = log.read_text()
    assert text.count(f"stopped by signal at step {stopped}") == 1 and "requeueing job" in text
    assert f"resumed from {tag} at step {stopped}" in text
    # every rank of both nodes exited 75 before the requeue: srun reported no other code
    assert job_info(job)["Restarts"] == "1"
    uninterrupted, _ = four_ranks_two_nodes
    # checkpoints every 100 steps here, every 2 there: saving does not change the numbers
    assert exact(run_dir) == exact(uninterrupted)


def test_a_checkpoint_of_four_ranks_on_two_nodes_resumes_on_two_ranks_of_one_node(slurm_cluster, world,
                                                                                  four_ranks_two_nodes, tmp_path):
    uninterrupted, _ = four_ranks_two_nodes
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    for path in ckpt.complete_checkpoints(run_dir)[1:]:  # keep step 6 only: resume from there
        shutil.rmtree(path)
    assert [p.name for p in ckpt.complete_checkpoints(run_dir)] == ["step_00000006"]
    text = run_to_end(world, run_dir, ("--nodes=1", "--ntasks=2"))
    assert f"resumed from {ckpt.checkpoint_root(run_dir) / 'step_00000006'} at step 6" in text
    assert "world 2 x micro 2 x accumulation 2" in text
    resumed, straight = read_metrics(run_dir), read_metrics(uninterrupted)
    # The data position is exact: the same samples (token counts) at every step. Losses only roughly: the RNG
    # streams (dropout) are new on a new rank count.
    assert [r["tokens"] for r in resumed] == [r["tokens"] for r in straight]
    assert len({r["tokens"] for r in straight}) == STEPS
    assert ckpt.read_meta(run_dir, ckpt.tag_for(STEPS))["world_size"] == 2


def test_submitit_with_two_nodes_hits_the_time_limit_is_requeued_and_finishes(slurm_cluster, world, tmp_path,
                                                                              monkeypatch):
    from launchers.submit_distill import submit_distill

    run_dir = tmp_path / "run"
    # More steps than the first run can do before the warning (2-32 s into the job, see test_slurm_distill): at
    # most ~170 steps of ~120 ms across the two nodes on a quiet 2-core machine.
    n = 600
    for key, value in job_env().items():
        monkeypatch.setenv(key, value)
    job = submit_distill(distill_args(world, run_dir, n, *RECIPE, "checkpoint.every_steps=100000"), cpu=True,
                         folder=tmp_path / "submitit", nodes=2, ntasks=1, time_min=1, signal_delay_s=58)
    track(job.job_id)
    log = tmp_path / "submitit" / f"{job.job_id}_0_log.err"
    wait_for(lambda: requeued(job.job_id), "submitit to requeue the job", 600, log, poll=0.3)
    sent("scontrol", "update", f"JobId={job.job_id}", "TimeLimit=10", "StartTime=now")
    assert job.results() == [str(run_dir)] * 2  # one result per rank, one rank per node
    assert wait_finished(job.job_id, timeout=300, output=log) == "COMPLETED"
    assert steps(run_dir) == list(range(1, n + 1)), "a step is missing or logged twice"
    text = log.read_text() + log.with_name(f"{job.job_id}_0_log.out").read_text()
    assert len(re.findall(r"resumed from .* at step \d+", text)) == 1
    assert accounted_nodes(job.job_id, "2|node[1-2]") == "2|node[1-2]"
