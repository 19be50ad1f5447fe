"""Sharing results on the Hugging Face Hub (`--push-to-hub`): model cards and one-commit uploads.

card.py  the model card (README.md) of a pgm train or pgm merge folder, from the files pgm wrote
push.py  the checks before any work (repo id, offline mode, a token) and the upload itself

May import: tasks, config, outputs, events, errors. Never: train, merge, infer, diagnose, cli.
"""
