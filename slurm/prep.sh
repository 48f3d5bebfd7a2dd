#!/usr/bin/env bash
# Data prep on Slurm: an array job with one task per input unit of data_prep.pack_corpus, then a job that
# merges the per-unit manifests once every task succeeded (afterok). Run it with bash on a login node:
#
#   bash slurm/prep.sh [sbatch options] -- PACK_CORPUS_ARGS
#   bash slurm/prep.sh --partition=cpu --time=2:00:00 --max-parallel=64 -- \
#       --format jsonl --input 'wiki/*.jsonl' --tokenizer TEACHER_DIR --out shards/wiki --seq-len 256
#
# Options before "--" go to both sbatch calls (partition, account, time, cpus, --output, ...), except
# --max-parallel=N (at most N array tasks at once). "--units-per-task K" among the pack_corpus arguments
# gives each task K units. Prints "ARRAY_JOB_ID MERGE_JOB_ID" on stdout. Re-running the same command
# skips finished units (pack_corpus is idempotent per unit), so a failed array is fixed by running it again.
# The jobs run in the submission directory with the submitting shell's environment: activate the venv
# first, or set MINIALBERT_PYTHON.
#SBATCH --job-name=minialbert-prep
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --requeue
set -euo pipefail
PYTHON=${MINIALBERT_PYTHON:-python3}

case "${1:-}" in
    --task)  # one array task: the unit(s) of index SLURM_ARRAY_TASK_ID
        shift
        [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || { echo "prep.sh --task: not in a Slurm array job" >&2; exit 2; }
        exec "$PYTHON" -m data_prep.pack_corpus "$@" --no-progress --unit-index "$SLURM_ARRAY_TASK_ID"
        ;;
    --merge)
        exec "$PYTHON" -m data_prep.merge_manifests "$2"
        ;;
esac

sbatch_opts=()
max_parallel=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
        --max-parallel=*) max_parallel=${1#--max-parallel=} ;;
        --max-parallel) max_parallel=$2; shift ;;
        *) sbatch_opts+=("$1") ;;
    esac
    shift
done
[ "${1:-}" = "--" ] || { echo "usage: bash slurm/prep.sh [sbatch options] -- PACK_CORPUS_ARGS" >&2; exit 2; }
shift
pack_args=("$@")

out="" per_task=1
for ((i = 0; i < ${#pack_args[@]}; i++)); do
    case "${pack_args[i]}" in
        --out) out=${pack_args[i + 1]:-} ;;
        --out=*) out=${pack_args[i]#--out=} ;;
        --units-per-task) per_task=${pack_args[i + 1]:-1} ;;
        --units-per-task=*) per_task=${pack_args[i]#--units-per-task=} ;;
    esac
done
[ -n "$out" ] || { echo "prep.sh: the pack_corpus arguments need --out DIR" >&2; exit 2; }

# Fails here, before anything is submitted, on a bad input or tokenizer argument.
units=$("$PYTHON" -m data_prep.pack_corpus "${pack_args[@]}" --list-units)
tasks=$(((units + per_task - 1) / per_task))
[ "$tasks" -gt 0 ] || { echo "prep.sh: no input units found" >&2; exit 2; }
array="0-$((tasks - 1))${max_parallel:+%$max_parallel}"

script=$(realpath "${BASH_SOURCE[0]}")
array_id=$(sbatch --parsable --array="$array" --output=%x-%A_%a.out "${sbatch_opts[@]}" \
    "$script" --task "${pack_args[@]}")
array_id=${array_id%%;*}
merge_id=$(sbatch --parsable --job-name=minialbert-prep-merge --dependency="afterok:$array_id" \
    --kill-on-invalid-dep=yes --output=%x-%j.out "${sbatch_opts[@]}" "$script" --merge "$out")
merge_id=${merge_id%%;*}
echo "prep.sh: $units units in $tasks array tasks: job $array_id; merge into $out/manifest.json: job $merge_id" >&2
echo "$array_id $merge_id"
