"""The model and what feeds it: loading the base (the only BitsAndBytesConfig builder), LoRA,
the tiny offline PaliGemma and the real models' presets, and turning task examples into batches
(collators, DataLoader workers and samplers, the answer-only loss).

load.py     load_model / load_processor / attach_lora / load_for_inference; adapters' base model
tiny.py     the tiny random PaliGemma built offline into PGM_HOME (tests, demo)
presets.py  the published PaliGemma 1 / 2 configurations (memory estimates, GPU check)
batches.py  TrainCollator / PromptCollator: examples -> processor batches (labels from `suffix`)
loader.py   DataLoader workers, epoch-keyed and length-grouped samplers, worker errors as one line
loss.py     cross-entropy on the answer positions only

May import: tasks, data, config, events, errors (and torch/transformers/peft inside functions).
Never: train, infer, merge, diagnose, cli.
"""
