#!/usr/bin/env bash
# The CPU recipe's students on the real NER sets, fine-tuned with the same command and budget as the teacher
# (python -m minialbert.finetune ner --epochs 3, defaults otherwise) on seeded subsets of 2,000 training / 500
# devel / 1,000 test sentences of ../shared/data (bench/real_subsets.py; 940 test sentences for NCBI-disease).
#   bash bench/cpu_recipe_eval.sh [ROWS...]        rows: teacher student adapters init   (default: all four)
# Writes runs/eval/<row>-<set>/ (summary.json per sweep); a finished sweep is skipped. Then:
#   python -m minialbert.finetune report runs/eval
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SETS=${SETS:-"NCBI-disease BC5CDR-disease BC5CDR-chem"}
THREADS=${THREADS:-2}
DATA=runs/ner2k
[ -f $DATA/sizes.json ] || $PY bench/real_subsets.py subsets --data ../shared/data --out $DATA --train 2000 --devel 500 --eval 1000
TEACHER=$($PY -c 'from minialbert.config import installed_minilm_teacher as t; print(t())')
[ -f runs/bench/teacher-init/model.safetensors ] || \
    $PY bench/real_subsets.py step-zero --config configs/distill/cpu.yaml --out runs/bench/teacher-init
for row in ${@:-teacher student adapters init}; do
    case $row in
        teacher)  model=$TEACHER; name=teacher; flags="" ;;
        student)  model=runs/cpu/distill/export; name=minialbert-cpu; flags="" ;;
        adapters) model=runs/cpu/distill/export; name=minialbert-cpu; flags="--adapters-only" ;;
        init)     model=runs/bench/teacher-init; name=minialbert-cpu-init-only; flags="" ;;
        *) echo "unknown row $row (teacher student adapters init)" >&2; exit 2 ;;
    esac
    for set in $SETS; do
        out=runs/eval/$row-$set
        [ -f $out/summary.json ] && continue
        echo "== $row $set"
        $PY -m minialbert.finetune ner --data $DATA/ner/$set --model $model --name $name --epochs 3 $flags \
            --out $out --save none --no-progress --threads $THREADS
    done
done
