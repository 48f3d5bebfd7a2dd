#!/usr/bin/env bash
# The CPU recipe's students on the real NER and GLUE sets, fine-tuned with the same command and budget as the
# teacher (python -m minialbert.finetune ner|glue --epochs 3, defaults otherwise) on seeded subsets of TRAIN
# training / DEVEL devel / TEST test sentences of ../shared/data (bench/real_subsets.py; default 2,000 / 500 /
# 1,000, the issue's; NCBI-disease has 940 test sentences). GLUE sets (SETS="rte cola stsb") train on TRAIN rows
# and are scored on the whole dev set.
#   [SETS="NCBI-disease BC5CDR-disease BC5CDR-chem"] [TRAIN=500 DEVEL=200 TEST=500] [THREADS=2]
#   [FLAGS="--lr 1e-4 --batch-size 16"] [EVAL=runs/eval] [ROOT=name] [GLUE_DATA=../shared/data/glue] \
#   bash bench/cpu_recipe_eval.sh [ROWS...]      (GLUE_DATA=../shared/data/glue: the whole GLUE training sets)
#   rows: teacher student adapters init; FLAGS go to every fine-tune (the same for every row), last: they
#   override the defaults here (--save none, --threads)
#   or NAME=FOLDER: any model folder, fully fine-tuned and reported as NAME (e.g. the teacher variants of
#   bench/init_ablation.py, or a step-0 student of bench/real_subsets.py step-zero with overrides);
#   adapters:NAME=FOLDER: the same with --adapters-only (written to adapters-NAME-<set>)
#   [TEACHERS=DIR]: task distillation: every row but teacher learns from DIR/teacher-<set> (the teacher row's
#   sweeps of an earlier call, run with FLAGS="--save best"): --distill-from DIR/teacher-<set>
# Writes $EVAL/<ROOT>/<row>-<set>/ (EVAL default runs/eval, ROOT <train>[-tuned]; summary.json per sweep); a
# finished sweep is skipped:
#   python -m minialbert.finetune report $EVAL/<ROOT>
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SETS=${SETS:-"NCBI-disease BC5CDR-disease BC5CDR-chem"}
THREADS=${THREADS:-2}
FLAGS=${FLAGS:-}
EVAL=${EVAL:-runs/eval}
TRAIN=${TRAIN:-2000} DEVEL=${DEVEL:-500} TEST=${TEST:-1000}
DATA=runs/ner-$TRAIN-$DEVEL-$TEST
[ -f $DATA/sizes.json ] || \
    $PY bench/real_subsets.py subsets --data ../shared/data --out $DATA --train $TRAIN --devel $DEVEL --eval $TEST
TEACHER=$($PY -c 'from minialbert.config import installed_minilm_teacher as t; print(t())')
[ -f runs/bench/teacher-init/model.safetensors ] || \
    $PY bench/real_subsets.py step-zero --config configs/distill/cpu.yaml --out runs/bench/teacher-init
for row in ${@:-teacher student adapters init}; do
    case $row in
        teacher)  model=$TEACHER; name=teacher; flags="" ;;
        student)  model=runs/cpu/distill/export; name=minialbert-cpu; flags="" ;;
        adapters) model=runs/cpu/distill/export; name=minialbert-cpu; flags="--adapters-only" ;;
        init)     model=runs/bench/teacher-init; name=minialbert-cpu-init-only; flags="" ;;
        adapters:*=*) model=${row#*=}; name=${row%%=*}; name=${name#adapters:}; flags="--adapters-only" ;;
        *=*)      model=${row#*=}; name=${row%%=*}; flags="" ;;
        *) echo "unknown row $row (teacher student adapters init NAME=FOLDER adapters:NAME=FOLDER)" >&2; exit 2 ;;
    esac
    for set in $SETS; do
        case $set in
            rte|cola|stsb) kind="glue --task $set --data ${GLUE_DATA:-$DATA/glue}/$set" ;;
            *)             kind="ner --data $DATA/ner/$set" ;;
        esac
        distill=""
        [ -n "${TEACHERS:-}" ] && [ $row != teacher ] && distill="--distill-from $TEACHERS/teacher-$set"
        tag=${row%%=*}
        out=$EVAL/${ROOT:-$TRAIN${FLAGS:+-tuned}}/${tag/:/-}-$set
        [ -f $out/summary.json ] && continue
        echo "== $row $set"
        $PY -m minialbert.finetune $kind --model $model --name $name --epochs 3 --save none $flags $distill \
            --out $out --no-progress --threads $THREADS $FLAGS
    done
done
