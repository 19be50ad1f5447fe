#!/usr/bin/env bash
# The merging experiment on CPU: four tiny QLoRA experts (one per task, synthetic official-format
# data), merged in memory by TIES, task arithmetic, TSV-M, Iso-CTS and RegMean, every merge evaluated
# on every task. Writes DIR/study/{results.csv,report.md,normalized.png}. README's "Merging study"
# quotes the report this made. Usage: scripts/study_example.sh [DIR]   (needs `pgm` on PATH)
set -euo pipefail
DIR=${1:-study-example}
mkdir -p "$DIR"
for task in vqav2 gqa docvqa coco; do
  pgm data synth "$task" "$DIR/data/$task" --num-examples 200 --overwrite
  pgm train "$task" --model-path tiny --data-root "$DIR/data/$task" --output-dir "$DIR/experts/$task" --overwrite \
    --max-steps 150 --batch-size 32 --gradient-accumulation-steps 1 --learning-rate 6e-3 \
    --logging-steps 50 --save-steps 1000
done
cat > "$DIR/study.yaml" <<YAML
base_model: tiny
experts:
  vqav2:  {path: experts/vqav2,  data_root: data/vqav2}
  gqa:    {path: experts/gqa,    data_root: data/gqa}
  docvqa: {path: experts/docvqa, data_root: data/docvqa}
  coco:   {path: experts/coco,   data_root: data/coco}
max_eval_samples: 64
grid:
  - {method: ties, density: [0.2, 0.5]}
  - {method: task_arithmetic, lambda: [0.25, 0.5]}
  - {method: tsv}
  - {method: iso_cts}
  - {method: regmean, calibration_samples: 128}
YAML
pgm study "$DIR/study.yaml" -o "$DIR/study"
