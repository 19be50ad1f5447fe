"""`pgm doctor` and `pgm memory-estimate`: what is wrong, and what fits.

doctor.py        the environment checks (CUDA, bitsandbytes, HF login and gated access, Java, ...)
known_errors.py  known error messages as data, matched against a pasted log (`pgm doctor --error`)
memory.py        the GPU memory estimate (parts, fit)
measure.py       measured peaks of real training steps, beside the estimate

May import: model, tasks, data, config, events, errors. Never: train, infer, merge, cli.
"""
