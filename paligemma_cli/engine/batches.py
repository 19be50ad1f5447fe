"""Examples -> model inputs: the training set (image, prefix, suffix) and the two collators.

Training batches go through the processor with `suffix`, which is what makes labels: the prefix
(image tokens, <bos>, prompt, "\\n") is masked with -100 and only suffix + <eos> is supervised.
Generation batches carry no suffix, are left-padded, and drop labels.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from paligemma_cli.data.sources import open_image
from paligemma_cli.tasks import Example, Task

IMAGE_TOKEN = "<image>"


class TrainingSet:
    """A map-style dataset of training items; the target is drawn per (seed, epoch, index)."""

    def __init__(self, task: Task, examples: Sequence[Example], seed: int):
        self.task, self.examples, self.seed, self.epoch = task, examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")  # reproducible across resumes
        return {"image": open_image(ex.image), "prefix": ex.prefix,
                "suffix": self.task.training_target(ex, rng)}


def image_seq_length(processor) -> int:
    return int(getattr(processor, "image_seq_length", None) or processor.image_processor.image_seq_length)


class TrainCollator:
    """Items -> processor batch with labels; counts examples whose answer got truncated."""

    def __init__(self, processor, max_length: int):
        self.processor = processor
        self.max_tokens = image_seq_length(processor) + max_length
        self.truncated = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.processor(
            text=[IMAGE_TOKEN + it["prefix"] for it in items], images=[it["image"] for it in items],
            suffix=[it["suffix"] for it in items], padding="longest", truncation=True,
            max_length=self.max_tokens, return_tensors="pt")
        eos = self.processor.tokenizer.eos_token_id
        self.truncated += int((batch["input_ids"][:, -1] != eos).sum())
        return dict(batch)


def generation_batch(processor, examples: Sequence[Example]) -> dict[str, Any]:
    """Left-padded prompts with images, no suffix (so no labels)."""
    batch = processor(text=[IMAGE_TOKEN + ex.prefix for ex in examples],
                      images=[open_image(ex.image) for ex in examples], padding="longest",
                      return_tensors="pt")
    batch = dict(batch)
    batch.pop("labels", None)
    return batch


def to_device(batch: dict[str, Any], model) -> dict[str, Any]:
    """Tensors to the model's device; pixel values to the vision tower's dtype."""
    import torch

    device = next(model.parameters()).device
    pixel_dtype = torch.float32
    for name, param in model.named_parameters():
        if "patch_embedding" in name:
            pixel_dtype = param.dtype
            break
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if key == "pixel_values":
                value = value.to(pixel_dtype)
        out[key] = value
    return out
