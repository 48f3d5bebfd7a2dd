#!/usr/bin/env bash
# Distillation on Slurm: one rank per GPU through srun, requeued until the run reaches its max steps.
#
#   sbatch [sbatch options] slurm/pretrain.sh [minialbert.distill arguments]
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=8 --partition=gpu \
#       slurm/pretrain.sh --config configs/distill/general.yaml --run-dir runs/general
#   DS_ACCELERATOR=cpu sbatch --ntasks=2 slurm/pretrain.sh --config configs/distill/tiny.yaml --run-dir runs/t
#
# Every argument after the script goes to `python -m minialbert.distill` unchanged. The #SBATCH lines below
# are defaults; options on the sbatch line override them (nodes, GPUs, partition, account, time, ...).
#
# Ranks: GPU nodes run one task per allocated GPU on every node (pass --gpus-per-node); with
# DS_ACCELERATOR=cpu exported the job's --ntasks are the ranks, one OpenMP thread each. Each rank gets RANK,
# WORLD_SIZE, LOCAL_RANK from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and MASTER_ADDR/MASTER_PORT from the
# first host of the allocation.
#
# Time limits and preemption: Slurm sends this script SIGUSR1 <seconds> before the time limit
# (--signal=B:USR1@...); it forwards the signal to every rank, the ranks finish their step, save a checkpoint
# and exit 75, and the script requeues the job, which resumes from the run dir. SIGTERM (scancel,
# scontrol requeue, preemption) is forwarded the same way but never leads to a requeue by this script:
# scancel means stop, and Slurm requeues a requeued or preempted job itself.
#
# The job runs in the submission directory with the submitting shell's environment: activate the venv
# first, or set MINIALBERT_PYTHON.
#SBATCH --job-name=minialbert-distill
#SBATCH --nodes=1
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -uo pipefail
PYTHON=${MINIALBERT_PYTHON:-python3}
EXIT_PREEMPTED=75

nodes=${SLURM_JOB_NUM_NODES:-1}
if [ "${DS_ACCELERATOR:-}" = cpu ]; then
    ranks=${SLURM_NTASKS:-1}
    launch=(--ntasks="$ranks")
    export OMP_NUM_THREADS=1
else
    gpus=${SLURM_GPUS_ON_NODE:-0}
    if [ "$gpus" -lt 1 ]; then
        echo "pretrain.sh: no GPUs in this allocation: pass --gpus-per-node=N to sbatch," \
             "or export DS_ACCELERATOR=cpu to run on CPU nodes" >&2
        exit 2
    fi
    ranks=$((nodes * gpus))
    launch=(--ntasks="$ranks" --ntasks-per-node="$gpus")
fi
launch+=(--nodes="$nodes" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}")

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# The same port for every run of this job (requeues included), different for jobs sharing a node.
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
echo "pretrain.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST:" \
     "$ranks ranks, master $MASTER_ADDR:$MASTER_PORT" >&2

signalled="" stop_signal=""
forward() {  # forward SIGNAL to every rank through srun, which relays it to its tasks
    signalled=1
    if [ "$1" = TERM ] || [ -z "$stop_signal" ]; then stop_signal=$1; fi  # TERM wins: never requeue after it
    echo "pretrain.sh: got SIG$1, forwarding it to the ranks" >&2
    [ -n "${srun_pid:-}" ] && kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# --wait: once one rank has exited, give the others 120 s (a checkpoint save) before srun kills them, so
# a crashed rank does not leave the rest blocked in a collective until the time limit.
srun "${launch[@]}" --wait=120 bash -c \
    'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
     exec "$0" -m minialbert.distill "$@"' "$PYTHON" "$@" &
srun_pid=$!
while :; do
    signalled=""
    wait "$srun_pid"
    rc=$?
    [ -n "$signalled" ] || break  # wait returned because srun exited, not because a trap ran
done

if [ "$rc" = "$EXIT_PREEMPTED" ] && [ "$stop_signal" != TERM ]; then
    echo "pretrain.sh: checkpoint saved at the time limit; requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
