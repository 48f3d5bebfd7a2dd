"""The test cluster itself: two nodes with their own hostnames and addresses, a job runs on them and accounting
reports it, as submitit needs."""

import subprocess

import pytest

from slurm_jobs import accounted_nodes, sbatch, wait_finished

pytestmark = pytest.mark.slurm


def test_two_nodes_are_idle_in_one_partition(slurm_cluster):
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"], capture_output=True, text=True).stdout
    assert sorted(out.split("\n")[:-1]) == ["node1 idle", "node2 idle"]


@pytest.mark.multinode
def test_a_job_spans_both_nodes_each_with_its_own_hostname_and_address(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch("--nodes=2", "--ntasks-per-node=1", f"--output={out}", "--wrap",
                 "srun bash -c 'echo $SLURMD_NODENAME $(hostname) $(hostname -I) $SLURM_PROCID'")
    assert wait_finished(job, timeout=60, output=out) == "COMPLETED"
    assert sorted(out.read_text().split("\n")[:-1]) == ["node1 node1 10.213.0.11 0", "node2 node2 10.213.0.12 1"]
    assert accounted_nodes(job, "2|node[1-2]") == "2|node[1-2]"


def test_batch_job_runs_and_accounting_reports_it(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch("--ntasks=2", "--nodes=1", f"--output={out}", "--wrap", "srun bash -c 'echo $SLURM_PROCID'")
    assert wait_finished(job, timeout=60, output=out) == "COMPLETED"
    assert sorted(out.read_text().splitlines()) == ["0", "1"]


def test_failed_job_is_reported_failed(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch(f"--output={out}", "--wrap", "exit 3")
    assert wait_finished(job, timeout=60, output=out) == "FAILED"
