"""`pgm train`: the QLoRA training loop and what it writes.

loop.py        train(): set up, step, evaluate, checkpoint, log (each a named function)
checkpoint.py  checkpoints with optimizer / scheduler / RNG state; resume; crash points for tests
tracking.py    train_log.jsonl and the logging window's figures
trackers.py    --report-to: Weights & Biases and TensorBoard behind one log(values, step)
plot.py        loss.png

May import: infer (evaluation during training), hub (--push-to-hub), model, tasks, data, metrics,
config, outputs, events, errors. Never: merge, diagnose, cli.
"""
