"""The only user of torch.distributed: ranks from the environment, collectives on small values, print0, seeding.

Ranks come from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (set by the ``deepspeed`` launcher,
``torchrun`` and ``slurm/pretrain.sh``), or from Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. A plain
``python`` process is rank 0 of 1. CPU runs (``DS_ACCELERATOR=cpu`` or no CUDA) use gloo; GPU runs use one process
group that serves CUDA tensors through NCCL and CPU tensors through gloo (``"cpu:gloo,cuda:nccl"``).

The loop's own collectives (token counts, loss means, stop flags) are a few CPU floats per step: they always run
on CPU tensors through a gloo backend — the default group's when it has one, else a gloo group of the same ranks
(a group made elsewhere, e.g. NCCL only, serves CUDA tensors alone: "No backend type associated with device type
cpu").
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on this host now (for a rendezvous that no other job on the machine holds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_cuda() -> bool:
    return os.environ.get("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu") == "cuda"


def init_distributed() -> DistContext:
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if use_cuda():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        # Ranks sharing a CPU box split its cores instead of fighting over them.
        torch.set_num_threads(cpu_threads(env))
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world)
    _make_cpu_group()
    return DistContext(rank, world, local, device)


def cpu_threads(env) -> int:
    """A CPU rank's torch threads: OMP_NUM_THREADS, else the node's cores split between its ranks."""
    return int(env.get("OMP_NUM_THREADS", "0")) or max(1, (os.cpu_count() or 1) // local_world_size(env))


def local_world_size(env) -> int:
    """Ranks on this rank's node: the launcher's count (torchrun's LOCAL_WORLD_SIZE, deepspeed's LOCAL_SIZE), or
    Slurm's for this node (SLURM_STEP_TASKS_PER_NODE, e.g. "2(x2)" or "3,1", at SLURM_NODEID), else the world."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if env.get(name):
            return int(env[name])
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per_node:
        counts = []
        for part in per_node.split(","):  # "2(x3),1": three nodes of 2, then one of 1
            count, _, repeat = part.partition("(x")
            counts += [int(count)] * int(repeat.rstrip(")") or 1)
        node = int(env.get("SLURM_NODEID", "0"))
        if node < len(counts):
            return counts[node]
    return max(1, int(env.get("WORLD_SIZE", "1")))


_cpu_group = None  # None: the default group reduces CPU tensors itself


def _make_cpu_group() -> None:
    """Collective (every rank calls it in ``init_distributed``): a gloo group when the default one has no CPU backend."""
    global _cpu_group
    try:
        tdist.group.WORLD._get_backend(torch.device("cpu"))
    except RuntimeError:
        _cpu_group = tdist.new_group(backend="gloo")


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a small tensor, as a float32 CPU tensor (reduced through gloo on every backend)."""
    t = values.detach().float().cpu().clone()
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return t
    tdist.all_reduce(t, group=_cpu_group)
    return t / tdist.get_world_size()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a small tensor, as a float64 CPU tensor (gloo on every backend; e.g. LAMB's per-tensor
    squared norms, whose pieces lie on different ranks)."""
    t = values.detach().double().cpu().clone()
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(t, group=_cpu_group)
    return t


def from_rank0(value: int) -> int:
    """Rank 0's integer, on every rank (a decision only rank 0 can take, e.g. after reading files)."""
    t = torch.tensor([value if rank() == 0 else 0], dtype=torch.int64)
    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(t, group=_cpu_group)
    return int(t.item())


def any_rank(*flags: bool) -> list[bool]:
    """For each flag, True on every rank when it is True on any rank (one all-reduce for all of them)."""
    return [v > 0 for v in all_reduce_mean(torch.tensor([1.0 if f else 0.0 for f in flags])).tolist()]


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def print0(*args: object, **kwargs: object) -> None:
    """Print on rank 0 only (stdout, flushed)."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def seed_everything(seed: int, rank_: int) -> None:
    """Seed this rank's python, numpy and torch streams (dropout differs between ranks)."""
    random.seed(seed + 1000 * rank_)
    np.random.seed((seed + 1000 * rank_) % 2**32)
    torch.manual_seed(seed + 1000 * rank_)


def rng_state() -> dict:
    """This rank's RNG streams as ints, lists and tensors only, so that a checkpoint of them loads with
    ``torch.load(weights_only=True)`` (numpy's own state holds an array)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached_gaussian],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and use_cuda():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s streams exactly (also the form older checkpoints hold: numpy's state as an array)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and use_cuda():
        torch.cuda.set_rng_state(state["cuda"])


def destroy() -> None:
    global _cpu_group
    if tdist.is_initialized():
        tdist.destroy_process_group()  # every group, the gloo one for CPU tensors included
    _cpu_group = None
