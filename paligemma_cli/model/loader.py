"""The input pipeline: samplers, DataLoader worker processes, and errors met inside them.

Images are decoded and run through the processor in worker processes (`--dataloader-workers`),
so the accelerator does not wait on one CPU thread. The training samplers yield (epoch, index)
keys: the epoch travels with each index into the worker, because persistent workers hold their
own copy of the dataset, which a `set_epoch` in the main process never reaches (VQAv2's target is
drawn from (seed, epoch, index)). The order is a function of (seed, epoch) alone, so a resumed
run meets the same batches in the same order whatever the number of workers.

A worker cannot raise a PgmError to the main process intact (torch re-raises it wrapped, with
the worker's traceback as its text), so the dataset returns an error item, the collator turns it
into an error batch, and `check_batch` raises the PgmError in the main process.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any, Callable, Sequence

from paligemma_cli.errors import PgmError

ERROR_KEY = "pgm_error"  # a batch holding only this: (message, hint) of the first failed item
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def resolve_workers(requested: int | None, processes: int = 1) -> int:
    """--dataloader-workers, or by default the CPUs each training process can spare, less one for itself.

    The default is 0 off Linux: workers there start by spawn and would have to pickle the
    examples (a hub data set's image loaders cannot be).
    """
    if requested is not None:
        return requested
    if not sys.platform.startswith("linux"):
        return 0
    return max(0, min(MAX_AUTO_WORKERS, available_cpus() // max(1, processes) - 1))


class EpochSampler:
    """A fresh permutation per epoch from (seed, epoch), as (epoch, index) keys."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def _generator(self):
        import torch

        return torch.Generator().manual_seed(self.seed + self.epoch)

    def order(self) -> list[int]:
        import torch

        return torch.randperm(self.n, generator=self._generator()).tolist()

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.order()])


class LengthGroupedSampler(EpochSampler):
    """Batches of similar length: transformers' mega-batch sort, drawn from (seed, epoch).

    A random permutation is cut into mega-batches of up to 50 batches, each sorted by length, so
    consecutive `batch_size` keys are alike and padding to the longest wastes little; the batch
    with the longest example comes first (memory runs out at once, if it does). Under
    `accelerate launch` each process takes every n-th of these batches, so shards stay alike too.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size = list(lengths), batch_size

    def order(self) -> list[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        return get_length_grouped_indices(self.lengths, self.batch_size, generator=self._generator())


def approx_token_counts(texts: Sequence[str]) -> list[int]:
    """A cheap stand-in for token counts: words plus digits (Gemma's tokenizer splits numbers digit
    by digit). Grouping needs lengths that sort like the real ones, not the real ones: this takes
    under 2 s for VQAv2's 443k questions on one busy core, where the fast tokenizer took over a
    minute."""
    return [len(text.split()) + sum(map(str.isdigit, text)) for text in texts]


class WorkerSeed:
    """Seeds a worker's random, numpy and torch from (--seed, worker id): the same in every run."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        import numpy  # transformers requires it
        import torch

        value = (self.seed * 1_000_003 + worker_id) % 2**32
        random.seed(value)
        torch.manual_seed(value)
        numpy.random.seed(value)


def make_loader(dataset, *, batch_size: int, collate_fn: Callable, workers: int, seed: int,
                sampler=None, persistent: bool = False, pin_memory: bool = False):
    """A DataLoader with `workers` processes (0: in this process) and its own generator.

    Its own generator: a loader drawing from the global RNG would shift dropout masks after a
    mid-epoch resume. Workers prefetch 2 batches each (torch's default; at 896 px a batch of 16
    is ~150 MB of pixels, so more would cost shared memory, not speed).
    """
    import torch

    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = dict(persistent_workers=persistent, worker_init_fn=WorkerSeed(seed), prefetch_factor=2)
        if sys.platform.startswith("linux"):  # fork, also where Python's default becomes forkserver (3.14)
            kwargs["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                       collate_fn=collate_fn, num_workers=workers, drop_last=False,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                                       **kwargs)


def failed_item(exc: PgmError) -> dict[str, Any]:
    return {ERROR_KEY: (exc.message, exc.hint)}


def failed_batch(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The error batch for a list of items, if any of them failed."""
    for item in items:
        if ERROR_KEY in item:
            return {ERROR_KEY: item[ERROR_KEY]}
    return None


def batch_error(batch: dict[str, Any]) -> PgmError | None:
    """The PgmError a worker met while building `batch`, if it met one."""
    if ERROR_KEY not in batch:
        return None
    message, hint = batch[ERROR_KEY]
    return PgmError(message, hint)


def check_batch(batch: dict[str, Any]) -> None:
    """Raise, in the main process, the PgmError a worker met while building `batch`."""
    error = batch_error(batch)
    if error is not None:
        raise error
