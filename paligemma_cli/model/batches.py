"""Examples -> model inputs: the training set (image, prefix, suffix) and the two collators.

Training batches go through the processor with `suffix`, which is what makes labels: the prefix
(image tokens, <bos>, prompt, "\\n") is masked with -100 and only suffix + <eos> is supervised.
Generation batches carry no suffix, are left-padded, and drop labels. Both run inside DataLoader
workers (see model/loader.py): an image that fails to open becomes an error item, not an exception.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from paligemma_cli.data.images import open_image
from paligemma_cli.model.loader import failed_batch, failed_item
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks import Example, Task

IMAGE_TOKEN = "<image>"


class TrainingSet:
    """A map-style dataset of training items; the target is drawn per (seed, epoch, index).

    Keys are the (epoch, index) pairs the training samplers yield (the epoch must travel with the
    key: a `set_epoch` here would not reach the copies in worker processes); a bare index is epoch 0.
    """

    def __init__(self, task: Task, examples: Sequence[Example], seed: int):
        self.task, self.examples, self.seed = task, examples, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        ex = self.examples[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")  # reproducible across resumes
        try:
            image = open_image(ex.image)
        except PgmError as exc:
            return failed_item(exc)
        return {"image": image, "prefix": ex.prefix, "suffix": self.task.training_target(ex, rng)}

    def length_texts(self) -> list[str]:
        """Per example, the text whose token count stands for its length (prompt + first answer)."""
        return [f"{ex.prefix}\n{ex.answers[0] if ex.answers else ''}" for ex in self.examples]


def image_seq_length(processor) -> int:
    return int(getattr(processor, "image_seq_length", None) or processor.image_processor.image_seq_length)


class TrainCollator:
    """Items -> processor batch with labels, answers cut at `max_length` (see `truncated_rows`).

    Rows are padded to the longest of the batch; `pad_to_max_length` pads every row to
    `max_length` instead, as the original fine-tuning scripts do (bench/bench_train.py's baseline).
    """

    def __init__(self, processor, max_length: int, pad_to_max_length: bool = False):
        self.processor = processor
        self.max_tokens = image_seq_length(processor) + max_length
        self.padding = {"padding": "max_length", "max_length": self.max_tokens} if pad_to_max_length \
            else {"padding": "longest"}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        failed = failed_batch(items)
        if failed:
            return failed
        batch = dict(self.processor(
            text=[IMAGE_TOKEN + it["prefix"] for it in items], images=[it["image"] for it in items],
            suffix=[it["suffix"] for it in items], return_tensors="pt", **self.padding))
        if batch["input_ids"].shape[1] > self.max_tokens:
            batch = self._truncate_answers(batch)
        return batch

    def _truncate_answers(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Cut over-long rows at the end of the answer, never in the image or prompt.

        (The tokenizer truncates from the left, which would cut image tokens.) Rows stay
        left-padded; a row keeps its whole prefix and at least one answer token.
        """
        import torch

        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in batch]
        pad = {"input_ids": self.processor.tokenizer.pad_token_id, "attention_mask": 0,
               "token_type_ids": 0, "labels": -100}
        rows = []
        for r in range(batch["input_ids"].shape[0]):
            real = batch["attention_mask"][r].bool()
            prefix_len = int((batch["token_type_ids"][r][real] == 0).sum())
            limit = max(self.max_tokens, prefix_len + 1)
            rows.append({k: batch[k][r][real][:limit] for k in keys})
        width = max(len(row["input_ids"]) for row in rows)
        for k in keys:
            batch[k] = torch.stack([torch.cat([torch.full((width - len(row[k]),), pad[k], dtype=row[k].dtype),
                                               row[k]]) for row in rows])
        return batch


def truncated_rows(batch: dict[str, Any], eos_id: int) -> int:
    """Rows whose answer was cut: left padding ends every whole row with <eos>, a cut one without.

    (Counted from the batch, because the collator runs in worker processes.)
    """
    return int((batch["input_ids"][:, -1] != eos_id).sum())


def generation_batch(processor, examples: Sequence[Example]) -> dict[str, Any]:
    """Left-padded prompts with images, no suffix (so no labels)."""
    return _prompt_batch(processor, [ex.prefix for ex in examples], [open_image(ex.image) for ex in examples])


def _prompt_batch(processor, prefixes: list[str], images: list[Any]) -> dict[str, Any]:
    batch = dict(processor(text=[IMAGE_TOKEN + p for p in prefixes], images=images, padding="longest",
                           return_tensors="pt"))
    batch.pop("labels", None)
    return batch


class PromptSet:
    """Examples -> (image, prefix) items for generation; a failed image becomes an error item."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        try:
            return {"image": open_image(ex.image), "prefix": ex.prefix}
        except PgmError as exc:
            return failed_item(exc)


class PromptCollator:
    """(image, prefix) items -> a generation batch (see `generation_batch`), or the error batch."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return failed_batch(items) or _prompt_batch(self.processor, [it["prefix"] for it in items],
                                                    [it["image"] for it in items])


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
