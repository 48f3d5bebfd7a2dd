"""The session's Slurm cluster: two nodes (network namespaces node1 and node2), started once by
``tests/slurm/cluster.sh start --nodes 2`` (or reused when such a cluster is running) and stopped at the end only
if this session started it. Tests that use it are marked ``slurm``; those that need both nodes ``multinode``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slurm_jobs import CLUSTER_SH, SlurmCluster, cancel_tracked


NODES = 2


def _cluster(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), *command], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    state = Path(os.environ.get("MINIALBERT_SLURM_DIR", "/tmp/minialbert-slurm"))
    nodes = (state / "nodes").read_text().strip() if (state / "nodes").is_file() else ""
    already_running = nodes == str(NODES) and _cluster("status").returncode == 0
    if not already_running:
        if os.geteuid() != 0 and os.environ.get("CI") != "true":
            pytest.skip("starting the test Slurm cluster needs root (tests/slurm/cluster.sh start --nodes 2)")
        started = _cluster("start", "--nodes", str(NODES))
        if started.returncode != 0:
            pytest.fail(f"tests/slurm/cluster.sh start failed:\n{started.stdout}{started.stderr}", pytrace=False)
    os.environ["SLURM_CONF"] = str(state / "etc" / "slurm.conf")  # sbatch/sacct here and in submitit
    yield SlurmCluster(state)
    if not already_running:
        _cluster("stop")


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs():
    """A failed test must not leave its jobs running into the next test (the node has few CPUs)."""
    yield
    cancel_tracked()
