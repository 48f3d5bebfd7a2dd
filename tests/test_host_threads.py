"""A CPU run's OpenMP workers spin while they wait (minialbert/host_threads.py): where it is wanted, the process runs
itself again, same arguments, with OMP_WAIT_POLICY=ACTIVE; nowhere else."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minialbert.host_threads import CHOSEN_BY_USER, spinning_wanted

ROOT = Path(__file__).resolve().parents[1]

# Prints a line before the restart (so a restart shows it twice), then the policy and the arguments it runs with.
SCRIPT = """
import os, sys
print("started", flush=True)
from minialbert.host_threads import restart_with_spinning_threads
restart_with_spinning_threads()
print("policy", os.environ.get("OMP_WAIT_POLICY", "unset"), "args", " ".join(sys.argv[1:]))
"""


@pytest.mark.parametrize("env, on_cuda, threads, local_ranks, cpus, wanted", [
    ({}, False, 2, 1, 2, True),   # one process, its threads on CPUs of its own
    ({}, False, 16, 1, 32, True),
    ({}, True, 2, 1, 2, False),  # a GPU run: workers would hold cores beside the loader
    ({}, False, 1, 2, 2, False),  # 2 ranks x 1 thread (cpu.yaml): no workers to wake
    ({}, False, 2, 2, 4, False),  # several ranks a node: unmeasured, left passive
    ({}, False, 4, 1, 2, False),  # more threads than CPUs: spinning would steal the CPU a thread needs
    ({"OMP_WAIT_POLICY": "PASSIVE"}, False, 2, 1, 2, False),  # the user's choice stands
    ({"GOMP_SPINCOUNT": "300000"}, False, 2, 1, 2, False),
    ({"KMP_BLOCKTIME": "1"}, False, 2, 1, 2, False),
])
def test_spinning_is_wanted_only_on_a_cpu_run_with_cores_of_its_own(env, on_cuda, threads, local_ranks, cpus, wanted):
    assert spinning_wanted(env, on_cuda, threads, local_ranks, cpus) is wanted


def run_script(threads: str, *extra_env: tuple[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in CHOSEN_BY_USER and k not in ("LOCAL_SIZE", "WORLD_SIZE")}
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}, **dict(extra_env))
    out = subprocess.run([sys.executable, "-c", SCRIPT, "--config", "a b.yaml"], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for a 2-thread process")
def test_a_multithreaded_cpu_process_runs_again_spinning_with_its_arguments():
    lines = run_script("2")
    assert lines == ["started", "started", "policy ACTIVE args --config a b.yaml"]


def test_a_single_thread_rank_or_a_users_policy_runs_once_unchanged():
    assert run_script("1") == ["started", "policy unset args --config a b.yaml"]
    assert run_script("2", ("OMP_WAIT_POLICY", "PASSIVE")) == ["started", "policy PASSIVE args --config a b.yaml"]
