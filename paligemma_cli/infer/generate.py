"""Batched greedy generation: left padding, only the new tokens decoded.

Batches are built (images decoded, processor run) by `workers` DataLoader processes while the
model generates; 0 builds them here, between generations.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from paligemma_cli.model.batches import PromptCollator, PromptSet, to_device
from paligemma_cli.model.loader import check_batch, make_loader
from paligemma_cli.tasks import Example


def clean_prediction(text: str) -> str:
    """Strip whitespace; PaliGemma answers end at <eos> or a newline."""
    return text.split("\n")[0].strip()


def generate_answers(model, processor, examples: Sequence[Example], *, max_new_tokens: int,
                     batch_size: int, on_batch: Callable[[int], None] | None = None,
                     workers: int = 0) -> Iterator[str]:
    """Yield one prediction per example, in order, generating `batch_size` at a time."""
    import torch

    tokenizer = processor.tokenizer
    was_training = model.training
    on_cuda = next(model.parameters()).device.type == "cuda"
    # One pass over the examples: workers that outlive it would only hold memory.
    loader = make_loader(PromptSet(examples), batch_size=batch_size, collate_fn=PromptCollator(processor),
                         workers=min(workers, -(-len(examples) // batch_size)), seed=0, pin_memory=on_cuda)
    model.eval()
    try:
        for batch in loader:
            check_batch(batch)
            batch = to_device(batch, model)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     num_beams=1, pad_token_id=tokenizer.pad_token_id)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            texts = [clean_prediction(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            # Report before yielding: a consumer that stops after the last answer (zip) never
            # resumes the generator, so a report after the yields would be lost for the last batch.
            if on_batch:
                on_batch(len(texts))
            yield from texts
    finally:
        if was_training:
            model.train()
