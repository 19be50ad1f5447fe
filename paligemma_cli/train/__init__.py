"""`pgm train`: the QLoRA training loop and what it writes.

loop.py        train(): set up, step, evaluate, checkpoint, log (each a named function)
checkpoint.py  checkpoints with optimizer / scheduler / RNG state; resume; crash points for tests
tracking.py    train_log.jsonl and the optional Weights & Biases run
plot.py        loss.png

May import: infer (evaluation during training), model, tasks, data, metrics, config, outputs,
events, errors. Never: merge, diagnose, cli.
"""
