"""OpenMP worker threads that spin while they wait, in a CPU run that has its cores to itself.

Why: torch's CPU kernels run on OpenMP (libgomp in the pip wheels). Between two parallel kernels libgomp's workers
spin a while, then sleep in the kernel; waking them for the next kernel costs a system call and, on a virtual
machine, a halted vCPU woken through the hypervisor — which meanwhile may hand its core to another guest. A
distillation step runs thousands of kernels, many of them well under a millisecond. With ``OMP_WAIT_POLICY=ACTIVE``
(the OpenMP standard's setting: workers never sleep) the paper-shape step (b8 s128, bf16, 2 threads, one process)
measured 1.53 / 1.62 -> 1.00 / 1.00 s on a busy 2-vCPU AMX host and 1 to 6 % faster on a quiet one
(docs/performance.md).

The setting must be in the environment before the OpenMP runtime loads (``import torch``), so an entry point calls
``restart_with_spinning_threads()`` first: where spinning is wanted and not yet set, the process executes itself
again, same arguments, with it set (a few seconds of imports, once). Wanted only where spinning takes a core from
no one: a CPU run, one process on the node, more than one thread, no more threads than CPUs it may use, and no wait
policy of the user's (``CHOSEN_BY_USER``). Not on GPU runs (each worker would hold a core beside the data loader and
the launch thread) and not with several ranks a node (unmeasured: their communication threads share the cores).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from minialbert import dist

WAIT_POLICY = "OMP_WAIT_POLICY"
CHOSEN_BY_USER = (WAIT_POLICY, "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""The standard's wait policy, libgomp's and Intel OpenMP's own knobs: any of them set, the user's choice stands."""


def spinning_wanted(env: Mapping[str, str], on_cuda: bool, threads: int, local_ranks: int, cpus: int) -> bool:
    """True where the run's OpenMP workers should spin (see the module's docstring)."""
    chosen = any(name in env for name in CHOSEN_BY_USER)
    return not chosen and not on_cuda and local_ranks == 1 and 1 < threads <= cpus


def restart_with_spinning_threads() -> None:
    """Execute this process again with ``OMP_WAIT_POLICY=ACTIVE`` where ``spinning_wanted``; else return."""
    env = os.environ
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not spinning_wanted(env, dist.use_cuda(), dist.cpu_threads(env), dist.local_world_size(env), cpus):
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**env, WAIT_POLICY: "ACTIVE"})
