#!/bin/bash
# Packing ablation of the general stage (README, "Packing ablation"): one fine-tuned teacher, then
# general + 2a + 2b of the embedded default for each general.packing arm and seed.
#   experiments/packing_ablation.sh <fine-tuned teacher folder> [seeds...]
# e.g. experiments/packing_ablation.sh runs/rotten_tomatoes_minilm/default/teacher/model 42 43
# Each arm takes about 7 minutes on 2 CPU cores; test accuracy lands in runs/rotten_tomatoes_minilm/abl_*/student-task/result.json
set -u
T=${1:?give the fine-tuned teacher folder, e.g. runs/rotten_tomatoes_minilm/default/teacher/model}
shift
SEEDS=${*:-42 43}
PY=${PYTHON:-.venv/bin/python}
for seed in $SEEDS; do
  for arm in concat intra_doc per_doc bm25; do
    case $arm in
      bm25) extra="general.packing=intra_doc general.pack_order=bm25";;
      *) extra="general.packing=$arm";;
    esac
    rid=abl_${arm}_s$seed
    echo "=== $rid $(date +%T)"
    $PY -m distill task --config experiments/rotten_tomatoes_minilm.yaml run_id=$rid seed=$seed \
      teacher.name=$T teacher.already_finetuned=true $extra || exit 1
  done
done
for r in runs/rotten_tomatoes_minilm/abl_*; do
  $PY -c "import json,sys; d=json.load(open(sys.argv[1]+'/student-task/result.json')); print(sys.argv[1], 'dev', round(d['dev']['score'],4), 'test', round(d['test']['score'],4))" "$r" 2>/dev/null
done
