"""Distillation through submitit: the Python twin of ``sbatch slurm/pretrain.sh``.

    python -m launchers.submit_distill [launcher options] -- [minialbert.distill arguments]
    python -m launchers.submit_distill --nodes 4 --gpus-per-node 8 --partition gpu --time-min 1440 -- \\
        --config configs/distill/general.yaml --run-dir runs/general
    python -m launchers.submit_distill --cpu --ntasks 2 --wait -- --config configs/distill/tiny.yaml --run-dir runs/t
    python -m launchers.submit_distill --cluster local --cpu --ntasks 2 -- ...     # no Slurm: local processes

``DistillJob`` is ``Checkpointable``: shortly before the time limit submitit signals the ranks (SIGUSR2), the
job relays that to ``minialbert.distill`` as SIGUSR1, every rank finishes its step and saves a checkpoint, and
``checkpoint()`` hands submitit a fresh ``DistillJob`` with the same arguments, which it requeues; the requeued
job resumes from the run dir. A job stopped by SIGTERM (scancel, preemption, ``scontrol requeue``) saves the
same way and exits 75 without a result; Slurm requeues a preempted job itself. The training code is
imported on the compute node only. From Python:

    job = submit_distill(["--config", "configs/distill/tiny.yaml", "--run-dir", "runs/t"], cpu=True, ntasks=2)
    job.results()[0]   # the run dir once the run reached its max steps (one result per rank)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import submitit

class DistillError(RuntimeError):
    """minialbert.distill exited with an error (2: bad configuration)."""


class DistillJob(submitit.helpers.Checkpointable):
    """Runs ``minialbert.distill.main(argv)`` as one rank of a submitit job; returns the run dir."""

    def __init__(self, argv: list[str], cpu: bool = False):
        self.argv = list(argv)
        self.cpu = cpu
        self._warned = False  # a time-limit warning (SIGUSR2) arrived in this run

    def __call__(self) -> str | None:
        self._export_rank_env()
        submitit_handler = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue
        signal.signal(signal.SIGUSR1, self._before_distill_listens)
        signal.signal(signal.SIGUSR2, self._on_time_limit_warning)
        from minialbert import distill  # on the node, after the rank environment is set

        code = distill.main(self.argv)
        if code == 0:
            return self.run_dir()
        if code != distill.EXIT_PREEMPTED:  # stopped by a signal after saving a checkpoint
            raise DistillError(f"minialbert.distill exited {code}; its message is in this job's stderr log")
        if self._warned and submitit.JobEnvironment().global_rank == 0:
            # The checkpoint is saved; now let submitit call checkpoint() and requeue the job (it exits).
            submitit_handler(signal.SIGUSR2, None)
        sys.exit(code)  # no result: this run was requeued, preempted or cancelled

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 at the time limit: the next run is a fresh job on the same run dir
        (distill resumes from its latest checkpoint by default)."""
        return submitit.helpers.DelayedSubmission(DistillJob(self.argv, self.cpu))

    def run_dir(self) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg == "--run-dir" and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith("--run-dir="):
                return arg.split("=", 1)[1]
        return None

    def _export_rank_env(self) -> None:
        """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from the submitit job (Slurm or local)."""
        env = submitit.JobEnvironment()
        job = str(env.job_id).split("_")[0]
        os.environ.update(
            RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
            LOCAL_WORLD_SIZE=str(env.num_tasks // env.num_nodes),
            MASTER_ADDR="127.0.0.1" if env.num_nodes == 1 else env.hostnames[0],
            # one port per job, the same after a requeue
            MASTER_PORT=os.environ.get("MASTER_PORT") or str(20000 + int(job) % 20000 if job.isdigit() else 29500),
        )
        if self.cpu:
            os.environ.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")

    def _before_distill_listens(self, signum, frame) -> None:
        """SIGUSR1 before distill installed its own handler: remembered as a stop request."""
        self._warned = True

    def _on_time_limit_warning(self, signum, frame) -> None:
        self._warned = True
        # distill stops on SIGUSR1; deliver it once distill's handler is in place (the warning may come
        # while the rank is still importing or loading the teacher).
        threading.Thread(target=self._relay_stop, daemon=True).start()

    def _relay_stop(self) -> None:
        while signal.getsignal(signal.SIGUSR1) == self._before_distill_listens:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)


def make_executor(cluster: str = "slurm", folder: str | Path = "submitit_logs/distill", nodes: int = 1,
                  gpus_per_node: int = 0, ntasks: int = 1, cpus_per_task: int = 1, partition: str | None = None,
                  account: str | None = None, time_min: int = 1440, signal_delay_s: int = 300,
                  max_requeues: int = 20) -> submitit.Executor:
    """One task per GPU on each node, or ``ntasks`` CPU ranks on each node when ``gpus_per_node`` is 0."""
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else cluster,
                                     slurm_max_num_timeout=max_requeues)
    if cluster == "slurm" and executor.cluster != "slurm":
        raise RuntimeError("--cluster slurm: no Slurm here (sbatch not found); use --cluster local")
    tasks_per_node = gpus_per_node if gpus_per_node else ntasks
    params = dict(name="minialbert-distill", nodes=nodes, tasks_per_node=tasks_per_node, cpus_per_task=cpus_per_task,
                  timeout_min=time_min)
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = signal_delay_s
        extra = {k: v for k, v in (("partition", partition), ("account", account)) if v}
        if extra:
            params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def submit_distill(distill_args: list[str], cpu: bool = False, **executor_args) -> submitit.Job:
    """Submit one distillation run; ``job.results()[0]`` is its run dir once it reached its max steps."""
    return make_executor(**executor_args).submit(DistillJob(distill_args, cpu=cpu))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m launchers.submit_distill", description=__doc__.splitlines()[0])
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm")
    p.add_argument("--folder", default="submitit_logs/distill", help="submitit's logs and pickles")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="one rank per GPU (ignored with --cpu)")
    p.add_argument("--cpu", action="store_true", default=os.environ.get("DS_ACCELERATOR") == "cpu",
                   help="CPU ranks (DS_ACCELERATOR=cpu); the default when DS_ACCELERATOR=cpu is exported")
    p.add_argument("--ntasks", type=int, default=2, help="ranks per node with --cpu")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time-min", type=int, default=1440, help="time limit of each run, minutes")
    p.add_argument("--signal-delay-s", type=int, default=300, help="checkpoint this long before the time limit")
    p.add_argument("--max-requeues", type=int, default=20, help="time-limit requeues before giving up")
    p.add_argument("--wait", action="store_true", help="block until the run is done (always with local)")
    args = p.parse_args(argv[:split])
    job = submit_distill(
        argv[split + 1:], cpu=args.cpu, cluster=args.cluster, folder=args.folder, nodes=args.nodes,
        gpus_per_node=0 if args.cpu else args.gpus_per_node, ntasks=args.ntasks, cpus_per_task=args.cpus_per_task,
        partition=args.partition, account=args.account, time_min=args.time_min,
        signal_delay_s=args.signal_delay_s, max_requeues=args.max_requeues)
    print(f"submitted job {job.job_id}; logs in {args.folder}", file=sys.stderr)
    if args.wait or args.cluster == "local":
        try:
            print(f"done: {job.results()[0]}", file=sys.stderr)
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
            print(f"error: job {job.job_id}: {err}", file=sys.stderr)
            return 1
    print(job.job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
