#!/usr/bin/env bash
# Fine-tune and evaluate one student on RTE and MRPC (or the sets of docs/results.md) on one GPU, in under 8
# minutes, from local data.
#
#   bench/gpu_glue.sh STUDENT_DIR GLUE_DIR [OUT_DIR]
#   TASKS="rte cola NCBI-disease BC5CDR-chem BC5CDR-disease" bench/gpu_glue.sh STUDENT_DIR runs/bench/real/data
#
# STUDENT_DIR  a MiniALBERT folder (config.json, model.safetensors, tokenizer files), or any Hugging Face
#              encoder folder (then set MODES=full: adapter-only tuning needs a MiniALBERT model).
# GLUE_DIR     local GLUE data (no network needed), one folder per task:
#                GLUE_DIR/rte/train.tsv   GLUE_DIR/rte/validation.tsv    columns: sentence1 sentence2 label
#                GLUE_DIR/mrpc/train.tsv  GLUE_DIR/mrpc/validation.tsv   columns: sentence1 sentence2 label
#              (a header line; tab-separated, no quoting; labels 0/1 or the GLUE names such as not_entailment;
#              dev.tsv is read as validation; .csv/.jsonl files or a DatasetDict.save_to_disk folder per task
#              work too). On a machine with network access:
#                python -c "import datasets as d; [d.load_dataset('nyu-mll/glue', t).save_to_disk(f'GLUE_DIR/{t}') for t in ('rte', 'mrpc')]"
#              Or the folder bench/real_subsets.py writes (GLUE_DIR/glue/<task>, GLUE_DIR/ner/<set>; run
#              `python bench/real_subsets.py subsets --data ../shared/data --out runs/bench/real/data --train 0
#              --eval 0` for the whole sets), carried to the GPU machine as the ignored path runs/bench/real/data:
#              a task found under ner/ is fine-tuned with `finetune ner` (test P/R/F1).
# OUT_DIR      default runs/bench/gpu-glue-<time>: one sweep folder per task and mode (summary.json, one
#              result.json per run), table.md (the markdown table), timings.txt (seconds per sweep).
#
# Environment (defaults): TASKS="rte mrpc" MODES="full adapters" LRS_FULL="5e-5 1e-4" LRS_ADAPTERS="1e-3" EPOCHS=3 SEEDS=42
#   BATCH=32 MAX_LENGTH=128 DEVICE=cuda PRECISION=auto BUDGET_S=420 (all sweeps together; each sweep is
#   killed when the budget is spent, leaving room for start-up and the table) PYTHON=.venv/bin/python
#
# Expected on one H100 with a 6-recursion H=768 student: 6 sweeps of 3 epochs (RTE 2.5k, MRPC 3.7k pairs)
# take a few minutes. Record the numbers in docs/performance.md with the card and this command line.
set -euo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "error: expected STUDENT_DIR GLUE_DIR [OUT_DIR], got $# argument(s) (bench/gpu_glue.sh --help)" >&2
    exit 2
fi
STUDENT=$1 GLUE=$2 OUT=${3:-runs/bench/gpu-glue-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-.venv/bin/python}
TASKS=${TASKS:-rte mrpc} MODES=${MODES:-full adapters} LRS_FULL=${LRS_FULL:-5e-5 1e-4} LRS_ADAPTERS=${LRS_ADAPTERS:-1e-3}
EPOCHS=${EPOCHS:-3} SEEDS=${SEEDS:-42} BATCH=${BATCH:-32} MAX_LENGTH=${MAX_LENGTH:-128}
DEVICE=${DEVICE:-cuda} PRECISION=${PRECISION:-auto} BUDGET_S=${BUDGET_S:-420}

[[ -f "$STUDENT/config.json" ]] || { echo "error: $STUDENT: not a model folder (expected config.json)" >&2; exit 2; }
declare -A CMD
for task in $TASKS; do  # GLUE_DIR/<task> or GLUE_DIR/glue/<task>: GLUE; GLUE_DIR/ner/<task>: NER
    if [[ -d "$GLUE/$task" ]]; then CMD[$task]="glue --task $task --data $GLUE/$task"
    elif [[ -d "$GLUE/glue/$task" ]]; then CMD[$task]="glue --task $task --data $GLUE/glue/$task"
    elif [[ -d "$GLUE/ner/$task" ]]; then CMD[$task]="ner --data $GLUE/ner/$task"
    else echo "error: $GLUE/$task: no such folder (expected $task/train.tsv and $task/validation.tsv)" >&2; exit 2; fi
done
for mode in $MODES; do
    [[ "$mode" == full || "$mode" == adapters ]] || { echo "error: MODES: '$mode' is not 'full' or 'adapters'" >&2; exit 2; }
done
if [[ "$DEVICE" == cuda* ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: DEVICE=$DEVICE but torch sees no CUDA device (DEVICE=cpu runs a smoke test)" >&2
    exit 2
fi

mkdir -p "$OUT"
{
    echo "# bench/gpu_glue.sh $*  ($(date -u +%FT%TZ), $(hostname))"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    echo "TASKS=$TASKS MODES=$MODES LRS_FULL=$LRS_FULL LRS_ADAPTERS=$LRS_ADAPTERS EPOCHS=$EPOCHS SEEDS=$SEEDS BATCH=$BATCH MAX_LENGTH=$MAX_LENGTH DEVICE=$DEVICE PRECISION=$PRECISION"
} | tee "$OUT/timings.txt"

start=$SECONDS status=0
for task in $TASKS; do
    for mode in $MODES; do
        left=$((BUDGET_S - (SECONDS - start)))
        if ((left <= 0)); then
            echo "budget of ${BUDGET_S}s spent: $task/$mode skipped" | tee -a "$OUT/timings.txt"
            status=124
            continue
        fi
        if [[ $mode == adapters ]]; then flags=(--adapters-only --lr $LRS_ADAPTERS); else flags=(--lr $LRS_FULL); fi
        t0=$SECONDS
        rc=0
        # shellcheck disable=SC2086  # CMD holds the sub-command and its data flags
        timeout --signal=TERM --kill-after=10 "$left" "$PYTHON" -m minialbert.finetune ${CMD[$task]} \
            --model "$STUDENT" --out "$OUT/$task-$mode" "${flags[@]}" --epochs "$EPOCHS" \
            --seeds $SEEDS --batch-size "$BATCH" --max-length "$MAX_LENGTH" --device "$DEVICE" \
            --precision "$PRECISION" --save none --no-progress || rc=$?
        echo "$task $mode: $((SECONDS - t0)) s (exit $rc)" | tee -a "$OUT/timings.txt"
        if ((rc == 124)); then status=124; elif ((rc != 0)); then exit "$rc"; fi
    done
done
echo "total: $((SECONDS - start)) s" | tee -a "$OUT/timings.txt"
if compgen -G "$OUT/*/summary.json" >/dev/null; then
    "$PYTHON" -m minialbert.finetune report "$OUT" --out "$OUT/table.md"
fi
exit "$status"
