"""Inference: `pgm eval` and `pgm predict`.

generate.py  batched greedy generation over PromptCollator batches
evaluate.py  run a model (or read a results file), score with the task's official metric, write
             predictions.jsonl / metrics.json
predict.py   answers for the user's own images

May import: model, tasks, data, metrics, config, outputs, events, errors. Never: train, merge,
diagnose, cli.
"""
