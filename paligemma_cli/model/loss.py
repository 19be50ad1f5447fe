"""The training loss from logits of the answer positions only.

PaliGemma's forward computes fp32 logits over the whole vocabulary (257k entries) for every
position, image tokens included, although only the answer has labels: at 448 px that is most of a
training step's memory. Left padding puts every answer at the end of its row, so asking the model
for the last K positions' logits (`logits_to_keep`) and shifting the labels the same way gives the
same loss for a fraction of the memory.
"""

from __future__ import annotations

from typing import Any


def answer_positions(labels) -> int:
    """K: how many trailing positions hold a prediction of a supervised token (at least 1)."""
    supervised = labels != -100
    if not bool(supervised.any()):
        return 1
    first = supervised.float().argmax(dim=1)[supervised.any(dim=1)]  # first label per row
    return int(labels.shape[1] - int(first.min()) + 1)


def answer_loss(model, batch: dict[str, Any]):
    """Mean token cross-entropy over the supervised tokens, as the model's own loss computes it."""
    import torch.nn.functional as F

    labels = batch["labels"]
    keep = answer_positions(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    # Kept position j sits at L - keep + j and predicts token L - keep + j + 1.
    predictions = logits[:, :-1, :].float()
    targets = labels[:, labels.shape[1] - keep + 1:]
    return F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100)
