"""Data prep through submitit: one array task per input unit (``map_array``), then the manifest merge as a
job that starts once every task succeeded. The Python twin of ``slurm/prep.sh``.

    python -m launchers.submit_prep [launcher options] -- PACK_CORPUS_ARGS
    python -m launchers.submit_prep --partition cpu --time-min 120 --max-parallel 64 -- \\
        --format jsonl --input 'wiki/*.jsonl' --tokenizer TEACHER_DIR --out shards/wiki --seq-len 256
    python -m launchers.submit_prep --cluster local -- --format text --input corpus.txt ...   # no Slurm

On Slurm it prints the job ids and returns (``--wait`` blocks until the merge is done); ``--cluster local``
runs the tasks as local processes and always waits. Logs go to ``--folder`` (default submitit_logs/prep).
From Python: ``submit_prep(pack_args, cluster="slurm", folder=...)`` returns the array jobs and the merge job.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import submitit


class PrepError(RuntimeError):
    """A pack_corpus or merge_manifests run on the node exited non-zero (its message is in the job's log)."""


def pack_units(pack_args: list[str], task_index: int) -> int:
    """Array task ``task_index``: pack its unit(s). Imports the data-prep code on the node only."""
    from data_prep.pack_corpus import main

    code = main([*pack_args, "--no-progress", "--unit-index", str(task_index)])
    if code != 0:
        raise PrepError(f"pack_corpus --unit-index {task_index} exited {code}")
    return task_index


def merge(out: str) -> dict:
    """The dependent job: merge the per-unit records into ``out/manifest.json``; returns its totals."""
    import json

    from data_prep.merge_manifests import main

    code = main([out])
    if code != 0:
        raise PrepError(f"merge_manifests {out} exited {code}")
    return json.loads((Path(out) / "manifest.json").read_text())["totals"]


def count_tasks(pack_args: list[str]) -> int:
    """Array tasks for these arguments: units / --units-per-task, rounded up (checks the arguments too)."""
    from data_prep.pack_corpus import build_parser, main

    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        code = main([*pack_args, "--list-units"])
    if code != 0:
        raise PrepError(f"pack_corpus --list-units exited {code}")
    units = int(listing.getvalue().split()[-1])
    per_task = build_parser().parse_args(pack_args).units_per_task
    return -(-units // per_task)


def out_dir(pack_args: list[str]) -> str:
    from data_prep.pack_corpus import build_parser

    return build_parser().parse_args(pack_args).out


def make_executor(cluster: str, folder: str | Path, partition: str | None = None, account: str | None = None,
                  time_min: int = 240, cpus_per_task: int = 1, max_parallel: int = 256,
                  dependency: str | None = None) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "slurm" else cluster)
    if cluster == "slurm" and executor.cluster != "slurm":
        raise PrepError("--cluster slurm: no Slurm here (sbatch not found); use --cluster local")
    executor.update_parameters(name="minialbert-prep", timeout_min=time_min, cpus_per_task=cpus_per_task,
                               tasks_per_node=1, nodes=1, slurm_array_parallelism=max_parallel)
    extra = {"partition": partition, "account": account, "dependency": dependency}
    extra = {k: v for k, v in extra.items() if v}
    if dependency:
        extra["kill-on-invalid-dep"] = "yes"
    if extra and cluster == "slurm":
        executor.update_parameters(slurm_additional_parameters=extra)
    return executor


def submit_prep(pack_args: list[str], cluster: str = "slurm", folder: str | Path = "submitit_logs/prep",
                **executor_args) -> tuple[list[submitit.Job], submitit.Job]:
    """Submit the array of pack tasks and the merge job; returns ``(array_jobs, merge_job)``.

    On Slurm the merge waits for the array through ``--dependency=afterok``; the local executor has no
    dependencies, so there the array is waited for before the merge is submitted."""
    tasks = count_tasks(pack_args)
    executor = make_executor(cluster, folder, **executor_args)
    array_jobs = executor.map_array(pack_units, [pack_args] * tasks, list(range(tasks)))
    if cluster == "slurm":
        dependency = f"afterok:{array_jobs[0].job_id.split('_')[0]}"
        executor = make_executor(cluster, folder, dependency=dependency, **executor_args)
    else:
        for job in array_jobs:
            job.result()  # raises the task's error
    executor.update_parameters(name="minialbert-prep-merge")
    return array_jobs, executor.submit(merge, out_dir(pack_args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m launchers.submit_prep [options] -- PACK_CORPUS_ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m launchers.submit_prep", description=__doc__.splitlines()[0])
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm")
    p.add_argument("--folder", default="submitit_logs/prep", help="submitit's logs and pickles")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time-min", type=int, default=240, help="time limit of each task, minutes")
    p.add_argument("--cpus-per-task", type=int, default=1, help="match pack_corpus --workers")
    p.add_argument("--max-parallel", type=int, default=256, help="array tasks running at once")
    p.add_argument("--wait", action="store_true", help="block until the merge job is done (always with local)")
    args = p.parse_args(argv[:split])
    pack_args = argv[split + 1:]
    try:
        array_jobs, merge_job = submit_prep(
            pack_args, cluster=args.cluster, folder=args.folder, partition=args.partition, account=args.account,
            time_min=args.time_min, cpus_per_task=args.cpus_per_task, max_parallel=args.max_parallel)
        print(f"{len(array_jobs)} pack tasks: job {array_jobs[0].job_id.split('_')[0]}; merge: job {merge_job.job_id}",
              file=sys.stderr)
        if args.wait or args.cluster == "local":
            totals = merge_job.result()
            print(f"{out_dir(pack_args)}/manifest.json: {totals['units']} units, {totals['train_rows']} train + "
                  f"{totals['validation_rows']} validation rows", file=sys.stderr)
            if totals.get("warnings"):
                print(f"warning: {totals['warnings']} units gave no documents from a non-empty file; see "
                      f"{out_dir(pack_args)}/manifest.json sources[].warnings", file=sys.stderr)
    except (PrepError, submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{array_jobs[0].job_id.split('_')[0]} {merge_job.job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
