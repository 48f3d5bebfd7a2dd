"""The loop's small collectives on every kind of process group (2 real ranks)."""

from __future__ import annotations

import json
import subprocess
import sys

from distill_helpers import REPO, distill_env, free_port

# Each rank makes the default group itself, before minialbert sees it, as a launcher or DeepSpeed may.
RANK_SCRIPT = """
import json, os, sys, torch, torch.distributed as tdist
tdist.init_process_group(backend=sys.argv[1], rank=int(os.environ["RANK"]), world_size=2)
from minialbert import dist
ctx = dist.init_distributed()
mean = dist.all_reduce_mean(torch.tensor([ctx.rank + 1.0, 10.0 * ctx.rank], dtype=torch.bfloat16))
flags = dist.any_rank(ctx.rank == 1, False)
print(json.dumps({"mean": mean.tolist(), "device": str(mean.device), "flags": flags}))
dist.destroy()
"""


def run_two_ranks(backend: str) -> list[dict]:
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, backend], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**distill_env(), "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_collectives_work_when_the_default_group_serves_cuda_tensors_only():
    # A group registered for CUDA alone (like an NCCL-only group on a GPU node) cannot reduce CPU tensors; the
    # loop's counts, loss means and stop flags are CPU tensors.
    for result in run_two_ranks("cuda:gloo"):
        assert result == {"mean": [1.5, 5.0], "device": "cpu", "flags": [True, False]}


def test_collectives_on_a_plain_gloo_group():
    for result in run_two_ranks("gloo"):
        assert result == {"mean": [1.5, 5.0], "device": "cpu", "flags": [True, False]}


def test_threads_per_rank_come_from_the_ranks_on_this_node():
    from minialbert.dist import local_world_size

    # 4 ranks on 2 nodes: 2 share each node's cores (the world size would starve them).
    assert local_world_size({"WORLD_SIZE": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_NODEID": "1"}) == 2
    assert local_world_size({"WORLD_SIZE": "4", "SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_NODEID": "1"}) == 1
    assert local_world_size({"WORLD_SIZE": "5", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NODEID": "2"}) == 1
    assert local_world_size({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == 8
    assert local_world_size({"WORLD_SIZE": "4", "LOCAL_SIZE": "2"}) == 2
    assert local_world_size({"WORLD_SIZE": "2"}) == 2
