"""Everything `pgm train` builds before its first step, in the order a user's mistakes are cheapest.

`prepare` checks what a user can get wrong (output dir, checkpoint, data, model path) before torch,
accelerate and the model load, in every process, changing nothing; then torch and accelerate start
and the images are checked. Once the main process has claimed the output dir (train/loop.py),
`build` loads the model and makes the loader, optimiser and scheduler: a `Session` for the loop.
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paligemma_cli.config import TrainRun
from paligemma_cli.errors import PgmError
from paligemma_cli.events import Events
from paligemma_cli.outputs import Output, check_output
from paligemma_cli.train.checkpoint import require_resumable


@dataclass
class Session:
    """What the loop runs on: built once by `prepare`."""

    run: TrainRun
    task: Any
    out: Path
    events: Events
    accelerator: Any
    processor: Any
    model: Any
    loader: Any
    sampler: Any
    optimizer: Any
    scheduler: Any
    total_steps: int
    batches_per_epoch: int
    train_count: int
    trainable_params: int
    total_params: int
    output: Output | None  # the claimed output dir; None off the main process (only it writes)
    eval_examples: list = field(default_factory=list)
    eval_extra: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes


@dataclass
class Inputs:
    """What `prepare` found before the output dir is claimed: checked data and a started accelerate."""

    run: TrainRun
    task: Any
    out: Path
    events: Events  # silent off the main process
    accelerator: Any
    train_examples: list
    eval_examples: list
    eval_extra: dict


def prepare(run: TrainRun, events: Events) -> Inputs:
    """Check, read the data, start accelerate and check the images; nothing of the user's changes."""
    from paligemma_cli.tasks import get_task

    task = get_task(run.data.task)
    out = Path(run.train.output_dir)
    # Before torch is imported only the launcher's environment says which process this is; only the
    # first one reports progress.
    early = events if launch_rank() == 0 else Events()
    check_inputs(run, out, early)
    train_examples, eval_examples, eval_extra = read_data(run, task, early)
    accelerator = start_accelerate(run, early)
    if not accelerator.is_main_process:
        events = Events()
    if not run.data.skip_image_check:  # before the output dir is touched: a bad image changes nothing
        check_images(train_examples + eval_examples, accelerator, events)
    return Inputs(run, task, out, events, accelerator, train_examples, eval_examples, eval_extra)


def build(inputs: Inputs, output: Output | None) -> Session:
    """Model, loader, optimiser and scheduler, once the output dir is claimed (`output`)."""
    processor, model, trainable, total = load_for_training(inputs.run, inputs.events)
    return build_session(inputs, output, processor, model, trainable, total)


def check_inputs(run: TrainRun, out: Path, events: Events) -> None:
    """What a user can get wrong, checked before torch, accelerate and the model load (seconds to
    minutes), in every process, changing nothing of the user's: the trackers' packages, whether
    --push-to-hub can push at the end (a token; no network call), the output dir, the checkpoint."""
    from paligemma_cli.train.trackers import check_packages

    check_packages(run.train.trackers())
    if run.train.push_to_hub:
        from paligemma_cli.hub.push import check_push

        check_push(run.train.push_to_hub)
    for note in check_output(out, "train", overwrite=run.train.overwrite, resume=run.train.resume):
        events.message(note, "warning")  # what a killed run left unfinished, undone
    if run.train.resume:
        require_resumable(out)


def read_data(run: TrainRun, task, events: Events) -> tuple[list, list, dict]:
    """The training examples, and the evaluation examples and scoring extras when --eval-steps."""
    from paligemma_cli.model.load import resolve_model_path
    from paligemma_cli.tasks.sources import load_examples, split_for

    events.phase_start(f"Reading the {task.name} {split_for(task, run.data, 'train')} data")
    train_examples = load_examples(task, run.data, "train", check_images=False)
    eval_examples, eval_extra = [], {}
    if run.train.eval_steps:
        eval_examples = load_examples(task, run.data, "eval", check_images=False)
        if run.data.data_root is not None:
            eval_extra = task.load_score_extra(Path(run.data.data_root), split_for(task, run.data, "eval"))
    # Millions of long-lived objects at real size: keep the cyclic GC from walking them again on
    # every later collection (model loading, every step).
    gc.freeze()
    events.phase_end(f"{len(train_examples):,} training examples"
                     + (f", {len(eval_examples):,} for evaluation" if eval_examples else ""))
    resolve_model_path(run.model.model_path)
    return train_examples, eval_examples, eval_extra


def start_accelerate(run: TrainRun, events: Events):
    from paligemma_cli.model.load import device_kind, resolve_compute_dtype

    events.phase_start("Starting torch and accelerate")
    import torch
    from accelerate import Accelerator

    bf16 = device_kind() == "cuda" and resolve_compute_dtype(run.model.compute_dtype) == torch.bfloat16
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=device_kind() == "cpu")
    events.phase_end(f"{accelerator.num_processes} processes on {accelerator.device}"
                     if accelerator.num_processes > 1 else f"on {accelerator.device}")
    return accelerator


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun, MPI) set it; 0 when run alone."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def check_images(examples: list, accelerator, events: Events) -> None:
    """Every image file the run may draw exists and opens; each process checks 1/N of them.

    Any process may draw any example in some epoch (a fresh permutation per epoch), so all of the
    run's images are checked, split between the processes and combined: one error, same everywhere.
    """
    from accelerate.utils import gather_object

    from paligemma_cli.tasks.sources import check_image_files

    check_image_files(examples, events, rank=accelerator.process_index, world=accelerator.num_processes,
                      gather=gather_object)


def load_for_training(run: TrainRun, events: Events) -> tuple[Any, Any, int, int]:
    """(processor, model with LoRA attached, trainable parameters, all parameters)."""
    from paligemma_cli.model.load import attach_lora, load_model, load_processor

    events.phase_start(f"Loading the model ({run.model.model_path}, {run.model.quantization})")
    processor = load_processor(run.model.model_path, run.model.revision)
    model = attach_lora(load_model(run.model), run.model, run.lora, seed=run.train.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    events.phase_end(f"{total:,} parameters, LoRA rank {run.lora.lora_rank}")
    return processor, model, trainable, total


def build_session(inputs: Inputs, output: Output | None, processor, model, trainable: int,
                  total: int) -> Session:
    """Loader, optimiser and scheduler around the loaded model, prepared by accelerate."""
    from paligemma_cli.model.batches import TrainCollator, TrainingSet

    run, task, events, accelerator = inputs.run, inputs.task, inputs.events, inputs.accelerator
    cfg = run.train
    dataset = TrainingSet(task, inputs.train_examples, cfg.seed)
    collator = TrainCollator(processor, run.data.max_length or task.max_length)
    loader, sampler = train_loader(run, task, dataset, collator, accelerator.num_processes, events)
    optimizer = make_optimizer(run, [p for p in model.parameters() if p.requires_grad])
    model, loader = accelerator.prepare(model, loader)
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    return Session(run=run, task=task, out=inputs.out, events=events, accelerator=accelerator,
                   processor=processor, model=model, loader=loader, sampler=sampler, optimizer=optimizer,
                   scheduler=make_scheduler(run, optimizer, total_steps), total_steps=total_steps,
                   batches_per_epoch=batches_per_epoch, train_count=len(inputs.train_examples),
                   trainable_params=trainable, total_params=total, output=output,
                   eval_examples=inputs.eval_examples, eval_extra=inputs.eval_extra)


def train_loader(run: TrainRun, task, dataset, collator, processes: int, events: Events):
    """The training DataLoader (workers, sampler) and its sampler; says which it chose."""
    from paligemma_cli.model.load import device_kind
    from paligemma_cli.model.loader import (EpochSampler, LengthGroupedSampler, approx_token_counts, make_loader,
                                            resolve_workers)

    cfg = run.train
    grouped = task.group_by_length if cfg.group_by_length is None else cfg.group_by_length
    if grouped:
        sampler = LengthGroupedSampler(approx_token_counts(dataset.length_texts()), cfg.batch_size, cfg.seed)
    else:
        sampler = EpochSampler(len(dataset), cfg.seed)
    workers = resolve_workers(run.data.dataloader_workers, processes)
    events.message(f"Input: {workers} loader worker{'s' * (workers != 1)} per process, "
                   + ("length-grouped batches." if grouped else "random order."))
    loader = make_loader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator,
                         workers=workers, seed=cfg.seed, persistent=True, pin_memory=device_kind() == "cuda")
    return loader, sampler


def make_optimizer(run: TrainRun, params):
    import torch

    name = run.train.optimizer
    kwargs = {"lr": run.train.learning_rate, "weight_decay": run.train.weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if not torch.cuda.is_available():
        raise PgmError(f"--optimizer {name} needs a CUDA GPU.", "Use --optimizer adamw on CPU.")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, **kwargs)


def make_scheduler(run: TrainRun, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(run.train.lr_scheduler, run.train.lr_scheduler)
    warmup = int(math.ceil(run.train.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
