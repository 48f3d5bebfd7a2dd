"""The test cluster itself: a job runs on the node and accounting reports it, as submitit needs."""

import pytest

from slurm_jobs import sbatch, wait_finished

pytestmark = pytest.mark.slurm


def test_batch_job_runs_and_accounting_reports_it(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch("--ntasks=2", f"--output={out}", "--wrap", "srun bash -c 'echo $SLURMD_NODENAME $SLURM_PROCID'")
    assert wait_finished(job, timeout=60, output=out) == "COMPLETED"
    assert sorted(out.read_text().splitlines()) == ["localhost 0", "localhost 1"]


def test_failed_job_is_reported_failed(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch(f"--output={out}", "--wrap", "exit 3")
    assert wait_finished(job, timeout=60, output=out) == "FAILED"
