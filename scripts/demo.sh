#!/usr/bin/env bash
# The whole loop on CPU in a few minutes: synthetic VQAv2-format data, the tiny PaliGemma in 4-bit,
# evaluate -> QLoRA train -> evaluate again, and show the two accuracies side by side.
set -euo pipefail
DIR=${1:-demo}
EVAL="--task vqav2 --model-path tiny --data-root $DIR/data --max-eval-samples 96 --overwrite"

pgm data synth vqav2 "$DIR/data" --num-examples 200 --overwrite
pgm eval $EVAL --output-dir "$DIR/eval-before"
pgm train vqav2 --model-path tiny --data-root "$DIR/data" --output-dir "$DIR/run" --overwrite \
  --max-steps 150 --batch-size 32 --gradient-accumulation-steps 1 --learning-rate 6e-3 \
  --logging-steps 25 --save-steps 75
pgm eval $EVAL --adapter "$DIR/run" --output-dir "$DIR/eval-after"

python - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
before = json.load(open(f"{d}/eval-before/metrics.json"))["metrics"]
after = json.load(open(f"{d}/eval-after/metrics.json"))["metrics"]
print("\nVQA accuracy on held-out synthetic questions (official VQAv2 metric, 0-100)")
print(f"  {'':10s}{'overall':>10s}{'colour':>10s}{'count':>10s}")
for name, m in (("before", before), ("after", after)):
    t = m["per_answer_type"]
    print(f"  {name:10s}{m['accuracy']:10.1f}{t.get('other', 0):10.1f}{t.get('number', 0):10.1f}")
print(f"\nAdapter: {d}/run   loss curve: {d}/run/loss.png   predictions: {d}/eval-after/predictions.jsonl")
PY
